"""README.md tells the truth: its fenced bash and python blocks run, as printed, against a real
server, and answer what the README shows.

One server serves the embedded default models as `make serve` does (`flaskserve serve`; with the
test extras installed that is digits and minilm, so the openai snippet has its model). Each
command runs under bash in one working folder, in README order, with `flaskserve` on PATH (a shim
for `python -m flaskserve`, which is what `.venv/bin/flaskserve` runs) and the README's address,
127.0.0.1:5000, replaced by the server's. An output the README shows (a `# -> ...` line, a line
of JSON right after a command, or a json block right after the bash block) must match what came
back, `...` standing for anything. `flaskserve serve` lines other than the module's server run
until they answer `/v2/health/live`, on FLASKSERVE_PORT (the printed command has no --port).

What cannot run here is named in NOT_RUN with the reason and checked as far as it can be:
`make` targets with `make -n` (running them would install into the checkout's .venv), `pip
install -e '.[extra]'` by its extra existing, and the S3 line (tests/storage serves S3).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from servers import Server, free_port, stop_process_group
from waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ADDRESS = "127.0.0.1:5000"

#: Command prefixes the test does not run, and why; each is checked in `check_not_run`.
NOT_RUN = {
    "make ": "installs into the checkout's .venv: checked with make -n",
    "pip install -e ": "installs into the running environment: the extra must exist",
    "flaskserve serve s3://": "needs an S3 bucket: tests/storage serves S3 repositories",
}


@dataclass
class Command:
    text: str
    line: int
    expected: list[str] = field(default_factory=list)


@dataclass
class Block:
    language: str
    line: int
    body: str
    commands: list[Command] = field(default_factory=list)


def read_blocks() -> list[Block]:
    """The fenced bash and python blocks; a json block right after a bash block is the output
    of its last command."""
    text = README.read_text(encoding="utf-8")
    blocks: list[Block] = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.MULTILINE | re.DOTALL):
        language, body = match.group(1), match.group(2)
        line = text.count("\n", 0, match.start()) + 1
        between = text[: match.start()].rstrip()
        if language == "json" and blocks and blocks[-1].commands and between.endswith("```"):
            blocks[-1].commands[-1].expected.append(body)
        elif language in ("bash", "python"):
            block = Block(language, line, body)
            if language == "bash":
                block.commands = split_commands(body, line + 1)
            blocks.append(block)
    return blocks


def split_commands(body: str, first_line: int) -> list[Command]:
    commands: list[Command] = []
    pending, start = "", 0
    for number, line in enumerate(body.splitlines(), first_line):
        if not pending:
            stripped = line.strip()
            if stripped.startswith("# -> ") and commands:
                commands[-1].expected.append(stripped.removeprefix("# -> "))
                continue
            if not stripped or stripped.startswith("#"):
                continue
            if stripped.startswith("{") and commands:
                commands[-1].expected.append(stripped)
                continue
            start = number
        pending += line + "\n"
        try:
            shlex.split(pending, comments=True)
        except ValueError:
            continue  # a quote still open: the command goes on
        if not pending.rstrip().endswith("\\"):
            commands.append(Command(pending.rstrip("\n"), start))
            pending = ""
    assert not pending, f"README.md line {start}: unterminated command"
    return commands


def matches(expected: str, actual: str) -> bool:
    """`actual` is what `expected` shows, whitespace aside, `...` standing for anything."""
    pieces = re.sub(r"\s+", "", expected).split("...")
    return re.fullmatch(".*".join(map(re.escape, pieces)), re.sub(r"\s+", "", actual)) is not None


BLOCKS = read_blocks()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`make serve`: the embedded default models, in the session's shared model cache."""
    cache = tmp_path_factory.getbasetemp() / "cache"
    served = Server([], env={"FLASKSERVE_CACHE_DIR": str(cache)}, ready_path="/v2/health/ready",
                    timeout=600)
    yield served
    served.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, digits_model: Path) -> Path:
    """Where a reader runs the commands: a `flaskserve` on PATH, and `models/digits` (what
    `flaskserve init models` writes) for the convert line."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / "bin").mkdir()
    shim = folder / "bin" / "flaskserve"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m flaskserve "$@"\n')
    shim.chmod(0o755)
    shutil.copytree(digits_model, folder / "models" / "digits")
    return folder


def reason_not_run(command: Command) -> str | None:
    words = " ".join(shlex.split(command.text, comments=True)) + " "
    return next((why for prefix, why in NOT_RUN.items() if words.startswith(prefix)), None)


def check_not_run(command: Command) -> None:
    words = shlex.split(command.text, comments=True)
    if words[0] == "make":
        dry = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
        assert dry.returncode == 0, f"line {command.line}: {dry.stderr}"
    elif words[:3] == ["pip", "install", "-e"]:
        extras = re.fullmatch(r"\.\[([\w,]+)\]", words[3])
        assert extras, f"line {command.line}: install the checkout, '.[extra]'"
        pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
        known = pyproject["project"]["optional-dependencies"]
        assert set(extras.group(1).split(",")) <= set(known), command.text


def environment(workdir: Path, port: int) -> dict[str, str]:
    return {**os.environ, "PATH": f"{workdir / 'bin'}:{os.environ['PATH']}",
            "FLASKSERVE_PORT": str(port)}


def run_long(command: Command, text: str, workdir: Path) -> None:
    """A `flaskserve serve` line: it must come up and answer, then it is stopped."""
    port = free_port()
    process = subprocess.Popen(["bash", "-c", text], cwd=workdir, env=environment(workdir, port),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        def live() -> bool:
            assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
            try:
                return requests.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=5).ok
            except requests.RequestException:
                return False

        eventually(live, timeout=120, message=f"README.md line {command.line} serves")
    finally:
        stop_process_group(process)


def run_command(command: Command, server: Server, workdir: Path) -> None:
    if reason_not_run(command):
        check_not_run(command)
        return
    text = command.text.replace(ADDRESS, f"127.0.0.1:{server.port}")
    if shlex.split(text, comments=True)[:2] == ["flaskserve", "serve"]:
        run_long(command, text, workdir)
        return
    done = subprocess.run(["bash", "-c", text], cwd=workdir, env=environment(workdir, free_port()),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"README.md line {command.line}: {done.stdout}{done.stderr}"
    for expected in command.expected:
        assert matches(expected, done.stdout), (
            f"README.md line {command.line} shows\n{expected}\nbut answered\n{done.stdout}"
        )


def test_every_fenced_block_is_found():
    languages = [block.language for block in BLOCKS]
    assert languages.count("python") >= 3 and languages.count("bash") >= 5
    assert sum(len(block.commands) for block in BLOCKS) >= 20
    shown = [c for block in BLOCKS for c in block.commands if c.expected]
    assert len(shown) >= 4  # the outputs the README shows are checked


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b.language}-line{b.line}")
def test_the_readme_block_runs_as_printed(block: Block, server: Server, workdir: Path):
    if block.language == "python":
        code = block.body.replace(ADDRESS, f"127.0.0.1:{server.port}")
        done = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"README.md line {block.line}: {done.stderr}"
        return
    for command in block.commands:
        run_command(command, server, workdir)
