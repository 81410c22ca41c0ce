"""The PyTorch runtime: TorchScript and torch.export files, signatures, devices, threads."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from flaskserve.core.config import read_model_config
from flaskserve.core.errors import ModelLoadError
from flaskserve.runtimes import torch as torch_runtime


def load(model_dir: Path, version: str = "1"):  # type: ignore[no-untyped-def]
    return torch_runtime.load(read_model_config(model_dir), version, model_dir / version)


@pytest.mark.parametrize(
    ("kind", "platform"), [("pt", "pytorch_torchscript"), ("pt2", "pytorch_export")]
)
def test_saved_modules_give_the_same_numbers_as_the_module_itself(
    tmp_path: Path, torch_signature: str, torch_files, write_model, kind: str, platform: str
) -> None:
    model_dir = write_model(
        tmp_path, "tiny", torch_signature, {f"1/model.{kind}": torch_files[kind]}
    )
    model = load(model_dir)
    assert model.platform == platform
    x = np.random.default_rng(1).normal(size=(7, 4)).astype(np.float32)
    with torch.no_grad():
        expected = torch_files["module"](torch.from_numpy(x)).numpy()
    got = model.predict({"x": x})["probabilities"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert model.predict({"x": x[:1]})["probabilities"].shape == (1, 3)


def test_read_only_arrays_are_copied_not_shared(
    tmp_path: Path, torch_signature: str, torch_files, write_model
) -> None:
    model = load(write_model(tmp_path, "tiny", torch_signature, {"1/model.pt": torch_files["pt"]}))
    x = np.ones((2, 4), np.float32)
    x.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = model.predict({"x": x})["probabilities"]
    np.testing.assert_allclose(got.sum(axis=1), [1.0, 1.0], rtol=1e-6)


def test_several_outputs_come_from_a_tuple_or_a_dict(tmp_path: Path, write_model) -> None:
    class Stats(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"total": x.sum(dim=1), "largest": x.max(dim=1).values}

    class Pair(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x.sum(dim=1), x.max(dim=1).values

    toml = (
        '[[inputs]]\nname = "x"\ndatatype = "FP64"\nshape = [-1, 3]\n'
        '[[outputs]]\nname = "total"\ndatatype = "FP64"\nshape = [-1]\n'
        '[[outputs]]\nname = "largest"\ndatatype = "FP64"\nshape = [-1]\n'
    )
    x = np.array([[1.0, 5.0, 2.0], [-1.0, -3.0, 0.5]])
    for name, module in (("stats", Stats()), ("pair", Pair())):
        saved = tmp_path / f"{name}.pt"
        torch.jit.script(module).save(str(saved))
        model = load(write_model(tmp_path / "repo", name, toml, {"1/model.pt": saved}))
        out = model.predict({"x": x})
        np.testing.assert_allclose(out["total"], x.sum(axis=1))
        np.testing.assert_allclose(out["largest"], x.max(axis=1))


def test_a_torch_model_without_a_declared_signature_is_a_load_error(
    tmp_path: Path, torch_files, write_model
) -> None:
    model_dir = write_model(tmp_path, "tiny", "", {"1/model.pt": torch_files["pt"]})
    with pytest.raises(ModelLoadError, match=r"needs its signature in model.toml"):
        load(model_dir)


@pytest.mark.parametrize("kind", ["pt", "pt2"])
def test_a_signature_the_module_cannot_take_fails_the_load_with_the_reason(
    tmp_path: Path, torch_signature: str, torch_files, write_model, kind: str
) -> None:
    toml = torch_signature.replace("shape = [-1, 4]", "shape = [-1, 5]")
    model_dir = write_model(tmp_path, "tiny", toml, {f"1/model.{kind}": torch_files[kind]})
    with pytest.raises(ModelLoadError, match=r"does not fit the signature in model.toml") as caught:
        load(model_dir)
    assert "x [2, 5]" in str(caught.value)


def test_a_declared_output_shape_the_module_does_not_return_fails_the_load(
    tmp_path: Path, torch_signature: str, torch_files, write_model
) -> None:
    toml = torch_signature.replace("shape = [-1, 3]", "shape = [-1, 10]")
    model_dir = write_model(tmp_path, "tiny", toml, {"1/model.pt": torch_files["pt"]})
    with pytest.raises(ModelLoadError, match=r"output 'probabilities' with shape \[-1, 10\]"):
        load(model_dir)


def test_a_state_dict_saved_as_pt_is_explained(
    tmp_path: Path, torch_signature: str, torch_files, write_model
) -> None:
    model_dir = write_model(
        tmp_path, "tiny", torch_signature, {"1/model.pt": torch_files["state_dict"]}
    )
    with pytest.raises(ModelLoadError, match=r"not TorchScript .*torch.jit.script"):
        load(model_dir)


@pytest.mark.parametrize("kind", ["pt", "pt2"])
def test_truncated_files_are_load_errors(
    tmp_path: Path, torch_signature: str, torch_files, write_model, kind
) -> None:
    cut = torch_files[kind].read_bytes()[:400]
    model_dir = write_model(tmp_path, "tiny", torch_signature, {f"1/model.{kind}": cut})
    with pytest.raises(ModelLoadError, match=f"model.{kind} is truncated or not a PyTorch file"):
        load(model_dir)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_load_error_and_auto_uses_the_cpu(
    tmp_path: Path, torch_signature: str, torch_files, write_model
) -> None:
    model_dir = write_model(
        tmp_path, "tiny", 'device = "cuda"\n' + torch_signature, {"1/model.pt": torch_files["pt"]}
    )
    with pytest.raises(ModelLoadError, match=r"device = 'cuda' but PyTorch sees no GPU"):
        load(model_dir)
    (model_dir / "model.toml").write_text('device = "auto"\n' + torch_signature)
    assert load(model_dir).parameters["device"] == "cpu"


def test_threads_option_sets_torch_threads(
    tmp_path: Path, torch_signature: str, torch_files, write_model
) -> None:
    before = torch.get_num_threads()
    model_dir = write_model(
        tmp_path, "tiny", "threads = 1\n" + torch_signature, {"1/model.pt": torch_files["pt"]}
    )
    try:
        torch.set_num_threads(2)
        load(model_dir)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    (model_dir / "model.toml").write_text("threads = 0\n" + torch_signature)
    with pytest.raises(ModelLoadError, match=r"threads in model.toml must be an integer >= 1"):
        load(model_dir)
