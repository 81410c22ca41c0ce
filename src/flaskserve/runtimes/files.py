"""Finding a runtime's model file in a version folder, and describing files that are not one.

A wrong file is the most common reason a model does not load: saved in another format, renamed,
or cut short by a failed copy. These helpers turn that into a reason a person can act on ("holds
model.pt, which the torch runtime loads"; "is a zip archive, not an ONNX model") before a library
reports it as a parser error from deep inside.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

from flaskserve.core.config import RUNTIME_OF_SUFFIX
from flaskserve.core.errors import ModelLoadError

#: Longest library message quoted in a load error; some quote whole tracebacks.
MAX_DETAIL = 300


def model_file(path: Path, suffixes: Sequence[str], runtime: str) -> Path:
    """The single file in `path` whose suffix is one of `suffixes`.

    When there is none, the error names what the folder holds instead and which runtime would
    load it, so a model saved in one format but configured for another is obvious.
    """
    if not path.is_dir():
        raise ModelLoadError(f"{path} is not a folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in suffixes)
    if len(files) == 1:
        return files[0]
    wanted = " or ".join(suffixes)
    if len(files) > 1:
        names = ", ".join(p.name for p in files)
        raise ModelLoadError(f"{path} holds several {wanted} files ({names}); keep one")
    others = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if not others:
        raise ModelLoadError(f"no {wanted} file in {path} (the folder is empty)")
    described = ", ".join(_describe_other(p) for p in others)
    raise ModelLoadError(
        f"the {runtime} runtime needs a {wanted} file in {path}, which holds {described}; "
        "save the model in that format, or set runtime in model.toml to match the file"
    )


def _describe_other(file: Path) -> str:
    runtime = RUNTIME_OF_SUFFIX.get(file.suffix)
    return f"{file.name} (a {runtime} file)" if runtime else file.name


def sniff(file: Path) -> str:
    """What the first bytes of `file` say it is, for error messages ("" when nothing is known)."""
    try:
        with open(file, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return ""
    if not head:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04"):
        if zip_names(file) is None:
            return "it starts as a zip archive but its end is missing, so it was cut short"
        return "it is a zip archive (as PyTorch and skops files are)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "it is a Python pickle"
    return ""


def zip_names(file: Path) -> list[str] | None:
    """Member names of a zip archive, or None when `file` is not a complete zip archive
    (truncated archives lose their central directory, which sits at the end)."""
    try:
        with zipfile.ZipFile(file) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def detail(exc: BaseException) -> str:
    """A library exception as one short line for a load error.

    TorchScript errors quote a whole interpreter traceback and end with the actual error line;
    only that line is kept.
    """
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and any(line.startswith("Traceback") for line in lines):
        last = lines[-1].strip()
        if re.match(r"^\w+(Error|Exception): ", last):
            return _shorten(last)
        lines = [last]
    text = _shorten(" ".join(" ".join(lines).split()))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _shorten(text: str) -> str:
    if len(text) > MAX_DETAIL:
        text = text[: MAX_DETAIL - 3] + "..."
    return text
