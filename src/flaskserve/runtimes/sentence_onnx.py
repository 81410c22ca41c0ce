"""The ONNX backend of sentence-transformers models: export once, then tokenise, run, pool in numpy.

A sentence-transformers model is a pipeline: Transformer -> Pooling -> (Normalize). Only the
transformer is heavy, so it alone is exported to ONNX (TorchScript exporter, `dynamo=False`,
opset 17, dynamic batch and sequence axes) and run by ONNX Runtime; tokenising uses the model's
own fast tokenizer (the Rust `tokenizers` library, no Python per token), and pooling and
normalisation are a few numpy lines. On a 2-core CPU this is two to three times the speed of
`SentenceTransformer.encode` on the same batches (docs/runtimes.md has the numbers).

The export is checked against PyTorch on sample sentences before it is kept, and cached in the
flaskserve cache folder under a key made of the model folder (path, file names, sizes and
modification times) and the versions of the libraries that shape the export. It is built in a
temporary folder and renamed into place under a file lock, so workers starting together export
once and never read half an export. A cache hit loads with neither torch nor
sentence-transformers imported: only `tokenizers`, `onnxruntime` and numpy.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from flaskserve.core.config import ModelConfig
from flaskserve.core.errors import ModelLoadError
from flaskserve.runtimes.context import DEFAULT_OPTIONS, RuntimeOptions
from flaskserve.runtimes.files import detail
from flaskserve.version import __version__

log = logging.getLogger("flaskserve.runtimes.sentence_onnx")

#: Bump when the layout or meaning of an export changes, so old cache entries are not reused.
EXPORT_FORMAT = 1
OPSET = 17
POOLING_MODES = ("mean", "cls", "max")
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "token_embeddings"
#: Libraries whose version can change what the export contains.
KEYED_DISTRIBUTIONS = ("torch", "transformers", "sentence-transformers", "onnx")
#: Exported embeddings must match PyTorch's at least this well (cosine similarity).
MIN_COSINE = 0.9999
#: A run of at least this many tokens (sentences x padded length) shrinks ONNX Runtime's arena
#: when it ends (runtimes/onnx.py); W2's batches, 32 sentences of 16 tokens, reuse it.
SHRINK_AFTER_TOKENS = 1024
CHECK_SENTENCES = [
    "flaskserve exports this model once and checks it against PyTorch.",
    "Short one.",
    "A third sentence, longer than the others, so that the batch holds padding tokens too.",
]


@dataclass(frozen=True)
class Pipeline:
    """What runs around the exported transformer, as recorded at export time (`inputs` are the
    tokenizer outputs the transformer takes, filled in once the tokenizer has been asked)."""

    inputs: list[str]
    pooling: str
    normalize: bool
    max_seq_length: int
    do_lower_case: bool
    dimension: int
    pad_id: int
    pad_token: str
    pad_type_id: int


def export_dir(folder: Path, cache_dir: Path) -> Path:
    """The cached export of the model in `folder`, built (and checked) first if missing."""
    key = cache_key(folder)
    root = cache_dir / "onnx-exports"
    target = root / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', folder.name)}-{key}"
    if (target / "pipeline.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "pipeline.json").is_file():
            staging = Path(tempfile.mkdtemp(prefix=".exporting-", dir=root))
            try:
                export(folder, staging)
                os.rename(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return target


def cache_key(folder: Path) -> str:
    digest = hashlib.sha256(f"format={EXPORT_FORMAT};flaskserve={__version__}".encode())
    digest.update(str(folder.resolve()).encode())
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    for dist in KEYED_DISTRIBUTIONS:
        digest.update(f"{dist}={_version(dist)};".encode())
    return digest.hexdigest()[:16]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def export(folder: Path, target: Path) -> None:
    """Export the transformer of the sentence-transformers model in `folder` into `target`."""
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ModelLoadError(
            f"exporting to ONNX needs torch and sentence-transformers ({exc.name} missing)"
        ) from None
    try:
        model = SentenceTransformer(str(folder), device="cpu")
    except Exception as exc:
        raise ModelLoadError(
            f"sentence-transformers could not load {folder} ({detail(exc)})"
        ) from None
    pipeline = _pipeline_of(model)
    transformer: Any = model[0]  # a sentence-transformers Transformer module
    tokenizer = transformer.tokenizer
    sample = tokenizer(CHECK_SENTENCES, padding=True, truncation=True, return_tensors="pt")
    names = [name for name in TOKEN_INPUTS if name in sample]
    pipeline = replace(pipeline, inputs=names)
    module = _token_embeddings(transformer.auto_model, names)
    try:
        # The TorchScript exporter warns about its own deprecation and about traced branches
        # that do not apply to encoders; the check against PyTorch below is what counts.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                tuple(sample[name] for name in names),
                str(target / "model.onnx"),
                input_names=names,
                output_names=[OUTPUT],
                dynamic_axes={name: {0: "batch", 1: "sequence"} for name in [*names, OUTPUT]},
                opset_version=OPSET,
                dynamo=False,
            )
    except Exception as exc:
        raise ModelLoadError(f"exporting {folder.name} to ONNX failed ({detail(exc)})") from None
    tokenizer.backend_tokenizer.save(str(target / "tokenizer.json"))
    (target / "pipeline.json").write_text(json.dumps(asdict(pipeline), indent=2), encoding="utf-8")
    _check_against_torch(model, target)


def _pipeline_of(model: Any) -> Pipeline:
    """Read pooling and normalisation from the modules; refuse pipelines numpy cannot replay."""
    kinds = [type(module).__name__ for module in model]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
        raise ModelLoadError(
            f"the ONNX backend replays Transformer, Pooling and Normalize modules; this model has "
            f"{', '.join(kinds)}: set backend = 'torch'"
        )
    transformer, pooling = model[0], model[1]
    mode = getattr(pooling, "pooling_mode", None)
    if mode is None and hasattr(pooling, "get_pooling_mode_str"):
        mode = pooling.get_pooling_mode_str()
    if mode not in POOLING_MODES:
        raise ModelLoadError(
            f"the ONNX backend pools with {', '.join(POOLING_MODES)}; this model uses {mode!r}: "
            "set backend = 'torch'"
        )
    tokenizer = transformer.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError("the ONNX backend needs a fast tokenizer (tokenizer.json)")
    return Pipeline(
        inputs=[],
        pooling=str(mode),
        normalize="Normalize" in kinds,
        max_seq_length=int(model.max_seq_length),
        do_lower_case=bool(getattr(transformer, "do_lower_case", False)),
        dimension=int(embedding_dimension(model)),
        pad_id=int(tokenizer.pad_token_id or 0),
        pad_token=str(tokenizer.pad_token),
        pad_type_id=int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
    )


def embedding_dimension(model: Any) -> int:
    """`get_embedding_dimension` (sentence-transformers 5+) or its older name."""
    getter = (
        getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    )
    return int(getter())


def _token_embeddings(model: Any, names: list[str]) -> Any:
    """The Hugging Face model with positional token inputs and one output, ready to export."""
    import torch

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            return self.model(**dict(zip(names, tensors, strict=True))).last_hidden_state

    return TokenEmbeddings().eval()


def _check_against_torch(model: Any, target: Path) -> None:
    from flaskserve.runtimes.onnx import create_session_on_cpu, session_options

    session = create_session_on_cpu(target / "model.onnx", session_options(ModelConfig("check")))
    encoder = OnnxEncoder(target, session)
    ours = encoder.encode(CHECK_SENTENCES, normalize=True)
    theirs = model.encode(
        CHECK_SENTENCES, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    cosine = float(np.min(np.sum(ours * theirs, axis=1)))
    if cosine < MIN_COSINE:
        raise ModelLoadError(
            f"the ONNX export disagrees with PyTorch (cosine similarity {cosine:.5f} < "
            f"{MIN_COSINE}); set backend = 'torch'"
        )


class OnnxEncoder:
    """Sentences -> embeddings with an exported transformer, its tokenizer and numpy pooling."""

    def __init__(self, folder: Path, session: Any, run_options: Any = None) -> None:
        from tokenizers import Tokenizer

        self.run_options = run_options
        table = json.loads((folder / "pipeline.json").read_text(encoding="utf-8"))
        self.pipeline = Pipeline(**table)
        self.session = session
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=self.pipeline.max_seq_length)
        tokenizer.enable_padding(
            pad_id=self.pipeline.pad_id,
            pad_token=self.pipeline.pad_token,
            pad_type_id=self.pipeline.pad_type_id,
        )
        self.tokenizer = tokenizer

    @property
    def dimension(self) -> int:
        return self.pipeline.dimension

    def encode(self, sentences: list[str], normalize: bool) -> np.ndarray:
        if not sentences:
            return np.zeros((0, self.dimension), np.float32)
        pipeline = self.pipeline
        if pipeline.do_lower_case:
            sentences = [s.lower() for s in sentences]
        encodings = self.tokenizer.encode_batch(sentences)
        columns = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        feed = {name: columns[name] for name in pipeline.inputs}
        large = columns["input_ids"].size >= SHRINK_AFTER_TOKENS
        (tokens,) = self.session.run(None, feed, self.run_options if large else None)
        embeddings = _pool(tokens, columns["attention_mask"], pipeline.pooling)
        if normalize or pipeline.normalize:
            norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
            embeddings = embeddings / np.maximum(norms, 1e-12)
        return embeddings.astype(np.float32, copy=False)

    def count_tokens(self, sentences: list[str]) -> int:
        """Tokens the transformer reads for `sentences` (special tokens included, each sentence
        cut at `max_seq_length` as `encode` cuts it), padding excluded."""
        if not sentences:
            return 0
        if self.pipeline.do_lower_case:
            sentences = [s.lower() for s in sentences]
        return sum(sum(e.attention_mask) for e in self.tokenizer.encode_batch(sentences))


def _pool(tokens: np.ndarray, attention_mask: np.ndarray, mode: str) -> np.ndarray:
    if mode == "cls":
        return np.asarray(tokens[:, 0])
    mask = attention_mask[:, :, None].astype(tokens.dtype)
    if mode == "max":
        return np.asarray(np.where(mask > 0, tokens, np.finfo(tokens.dtype).min).max(axis=1))
    return np.asarray((tokens * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9))


def onnx_encoder(
    folder: Path, config: ModelConfig, cache_dir: Path, runtime: RuntimeOptions = DEFAULT_OPTIONS
) -> OnnxEncoder:
    """Export (or reuse) `folder` and open it with the session options of `config`, threads
    from `runtime` where `config` does not set them."""
    from flaskserve.runtimes.onnx import create_session, run_options

    exported = export_dir(folder, cache_dir)
    session = create_session(exported / "model.onnx", config, runtime)
    return OnnxEncoder(exported, session, run_options(config))
