"""The suite's own rules (tests/suite_policy.py, tests/waiting.py), checked in pytest runs of
their own over small test files, as a developer or CI would meet them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from suite_policy import could_select, has_gpu
from waiting import eventually

TESTS = Path(__file__).resolve().parent

SAMPLE = """\
import pytest
from servers import Server

def test_runs():
    pass

def test_needs_a_thing():
    pytest.skip("the thing is not installed")

@pytest.mark.gpu
def test_on_the_gpu():
    pytest.skip("no GPU here")

def launch():
    return Server(["."])

def test_sneaks_a_server():  # through a helper, which the markers do not look into
    launch()
"""

#: A module skipped as a whole when it is imported.
MODULE_SKIP = 'import pytest\n\npytest.importorskip("no_such_module_here")\n'

#: Fixtures named like the suite's, and a conftest that prints each test's markers.
MARKED = """\
import subprocess

import pytest
from servers import FLASKSERVE, Server

@pytest.fixture
def start_server():
    return None

@pytest.fixture
def own_server():
    server = Server(["."])
    yield server
    server.stop()

@pytest.fixture
def uses_own_server(own_server):
    return own_server

@pytest.fixture
def s3_server():
    return None

@pytest.fixture
def browser():
    return None

@pytest.fixture
def page(browser):
    return None

def test_serves(start_server): pass
def test_stores(s3_server): pass
def test_clicks(page): pass
def test_computes(): pass
def test_through_a_fixture(uses_own_server): pass
def test_runs_the_cli(): subprocess.run([*FLASKSERVE, "--help"])
"""
PRINT_MARKS = """\
def pytest_collection_finish(session):
    for item in session.items:
        marks = sorted(mark.name for mark in item.iter_markers())
        print("MARKS", item.name, ",".join(marks))
"""
#: A module marked slow as a whole, which would fail if it were imported.
HEAVY = "import pytest\nimport no_such_heavy_library\n\npytestmark = pytest.mark.slow\n"


def run_pytest(folder: Path, files: dict[str, str], *args: str, ci: bool) -> tuple[int, str]:
    """pytest over `files` written into `folder`, with the suite's policy loaded, `CI` set or
    not; returns the exit status and what it printed."""
    folder.mkdir(exist_ok=True)
    for name, source in files.items():
        (folder / name).write_text(source)
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only the policy: a quick run
    if ci:
        env["CI"] = "true"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "suite_policy", "-p", "no:cacheprovider",
         "--rootdir", str(folder), "-q", "-s", *args, str(folder)],
        capture_output=True, text=True, env=env, cwd=folder, timeout=120,
    )
    return done.returncode, done.stdout


def test_in_ci_every_skip_fails_the_run_but_a_gpu_test_on_a_machine_without_one(tmp_path):
    status, out = run_pytest(
        tmp_path, {"test_sample.py": SAMPLE, "test_module.py": MODULE_SKIP},
        "-k", "not sneaks", ci=True,
    )
    assert status == pytest.ExitCode.TESTS_FAILED, out
    assert "1 passed, 3 skipped" in out
    assert "skipped tests fail the run in CI (CI=true)" in out
    assert "test_sample.py::test_needs_a_thing: Skipped: the thing is not installed" in out
    assert "test_module.py: Skipped: could not import 'no_such_module_here'" in out
    assert ("test_on_the_gpu" in out.split("fail the run in CI")[1]) is has_gpu()


def test_outside_ci_a_skip_is_only_reported(tmp_path) -> None:
    status, out = run_pytest(
        tmp_path, {"test_sample.py": SAMPLE, "test_module.py": MODULE_SKIP},
        "-k", "not sneaks", ci=False,
    )
    assert status == pytest.ExitCode.OK, out
    assert "1 passed, 3 skipped" in out
    assert "fail the run in CI" not in out


def test_a_server_started_by_a_test_not_marked_e2e_is_refused(tmp_path) -> None:
    status, out = run_pytest(tmp_path, {"test_sample.py": SAMPLE}, "-k", "sneaks", ci=False)
    assert status == pytest.ExitCode.TESTS_FAILED, out
    assert "test_sneaks_a_server starts a server but is not marked e2e" in out


def test_markers_follow_fixtures_and_a_module_left_out_by_m_is_not_imported(tmp_path) -> None:
    files = {"test_marked.py": MARKED, "conftest.py": PRINT_MARKS, "test_heavy.py": HEAVY}
    status, out = run_pytest(tmp_path, files, "--collect-only", "-m", "not slow", ci=False)
    assert status == pytest.ExitCode.OK, out
    marks = dict(line.split(" ", 2)[1:] for line in out.splitlines() if line.startswith("MARKS"))
    assert marks == {
        "test_serves": "e2e", "test_stores": "s3", "test_clicks": "browser", "test_computes": "",
        "test_through_a_fixture": "e2e", "test_runs_the_cli": "e2e",
    }
    status, out = run_pytest(tmp_path, files, "--collect-only", "-m", "slow", ci=False)
    assert "No module named 'no_such_heavy_library'" in out  # `-m slow` does import it


@pytest.mark.parametrize(
    ("expression", "marks", "selects"),
    [
        ("not e2e and not slow", {"slow"}, False),
        ("not e2e and not slow", {"e2e", "slow"}, False),
        ("not e2e", {"slow"}, True),  # unless it is also marked e2e, which a test may be
        ("slow or e2e", {"e2e"}, True),
        ("not (slow or s3)", {"s3"}, False),
    ],
)
def test_could_select_holds_whatever_other_marks_a_test_has(expression, marks, selects) -> None:
    assert could_select(expression, marks) is selects


def test_eventually_returns_the_first_truthy_value_without_waiting_out_the_timeout() -> None:
    flag = threading.Event()
    threading.Timer(0.05, flag.set).start()
    started = time.monotonic()
    assert eventually(lambda: flag.is_set() and "done", timeout=10) == "done"
    assert time.monotonic() - started < 5


def test_eventually_fails_with_the_message_and_the_last_value() -> None:
    numbers = [1, 2, 3]
    expected = r"after 0.05s waiting until a number above 5 arrives \(last value: \[\]\)"
    with pytest.raises(AssertionError, match=expected):
        eventually(lambda: [n for n in numbers if n > 5], timeout=0.05,
                   message="a number above 5 arrives")
