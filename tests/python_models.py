"""Tiny Python models for test repositories: a `model.toml` and a module in a version folder, the
layout `runtimes/python.py` loads, written in one way by every test that needs one.

A module of its own (not conftest.py) so test files can import it by a name no other file has.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

#: A tensor of a signature: its datatype and shape, keyed by its name.
Tensors = Mapping[str, tuple[str, Sequence[int]]]


def python_toml(entrypoint: str, inputs: Tensors, outputs: Tensors, extra: str = "") -> str:
    """The `model.toml` of a Python model: `entrypoint` ("module:Class"), `extra` (top-level
    keys or tables such as `[batching]`), then the signature, one `[[inputs]]` or `[[outputs]]`
    table per tensor."""
    lines = ['runtime = "python"', f'entrypoint = "{entrypoint}"', *extra.splitlines()]
    for side, tensors in (("inputs", inputs), ("outputs", outputs)):
        for name, (datatype, shape) in tensors.items():
            lines += [f"[[{side}]]", f'name = "{name}"', f'datatype = "{datatype}"']
            lines.append(f"shape = {list(shape)}")
    return "\n".join(lines) + "\n"


def write_python_model(
    root: Path, name: str, toml: str, source: str, module: str | None = None, version: int = 1
) -> Path:
    """`root/name`: `toml` as its model.toml and `source` as the module of its entry point in
    version folder `version` (`module` names another file, for a model whose entry point is
    missing). Returns the version folder, where a model under test may leave files."""
    if module is None:
        module = tomllib.loads(toml)["entrypoint"].split(":")[0]
    folder = root / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    (root / name / "model.toml").write_text(toml, encoding="utf-8")
    (folder / f"{module}.py").write_text(source, encoding="utf-8")
    return folder


#: A model that answers its input unchanged: FP32 `x` [-1, 2] in, the same as `y` out.
ECHO_TOML = python_toml("echo:Echo", {"x": ("FP32", [-1, 2])}, {"y": ("FP32", [-1, 2])})
ECHO_PY = """\
class Echo:
    def predict(self, x):
        return {"y": x}
"""

#: A model whose calls a test holds in flight for as long as it needs, without sleeping: each
#: call adds a line to a file `started` beside the module, then waits (60 s at most) for a file
#: named `release` there, and answers INT32 `x` + 1 as `y`.
HELD_TOML = python_toml("held:Held", {"x": ("INT32", [-1])}, {"y": ("INT32", [-1])})
HELD_PY = """\
import time
from pathlib import Path

HERE = Path(__file__).parent


class Held:
    def predict(self, x):
        with open(HERE / "started", "a") as out:
            out.write("call\\n")
        deadline = time.monotonic() + 60
        while not (HERE / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return {"y": x + 1}
"""


def write_held(root: Path, name: str = "held") -> Path:
    """The held model at `root/name`; returns its version folder (touch `release` there)."""
    return write_python_model(root, name, HELD_TOML, HELD_PY)


def calls_started(version: Path) -> int:
    """How many calls a model that notes each in a `started` file beside it (the held model)
    has begun in version folder `version`."""
    path = version / "started"
    return len(path.read_text().splitlines()) if path.exists() else 0


#: Python streaming models: `gated` yields "first ", then waits for the file its prompt names
#: before "second" (so a test can see a token arrive before the next one exists); `endless`
#: yields "tick " until its stream is closed, then writes the file its prompt names; `flood`
#: the same with 64 KiB pieces and no pause, to fill a connection nobody reads.
STREAMERS_PY = '''\
import time
from pathlib import Path


class Gated:
    def predict(self, text_input):
        yield "first "
        gate = Path(text_input.strip())
        deadline = time.monotonic() + 60
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        yield "second"


class Endless:
    def predict(self, text_input):
        try:
            while True:
                yield "tick "
                time.sleep(0.02)
        finally:
            Path(text_input.strip()).write_text("closed")


class Flood:
    def predict(self, text_input):
        try:
            while True:
                yield "x" * 65536
        finally:
            Path(text_input.strip()).write_text("closed")
'''


def write_streamer(root: Path, name: str, cls: str) -> Path:
    """The streamer `cls` of `STREAMERS_PY` served as `root/name`; returns its version folder."""
    version = root / name / "1"
    version.mkdir(parents=True)
    (version / "streamers.py").write_text(STREAMERS_PY, encoding="utf-8")
    (root / name / "model.toml").write_text(
        f'runtime = "python"\nentrypoint = "streamers:{cls}"\n', encoding="utf-8"
    )
    return version


#: A model that reads the request's `parameters`: INT64 `x` times the `scale` parameter (1
#: without one) as `y`, and how many parameters it was given, on each row, as `count`.
SCALED_TOML = python_toml(
    "scaled:Scaled", {"x": ("INT64", [-1])}, {"y": ("INT64", [-1]), "count": ("INT64", [-1])}
)
SCALED_PY = """\
class Scaled:
    def predict(self, x, parameters):
        return {"y": x * parameters.get("scale", 1), "count": [len(parameters)] * len(x)}
"""
