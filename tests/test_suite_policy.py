"""The suite's own rules (tests/suite_policy.py, tests/waiting.py), each checked in a pytest run
of its own over a small test file, as a developer or CI would meet them."""

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


def run_pytest(tmp_path: Path, source: str, *args: str, ci: bool) -> subprocess.CompletedProcess:
    """pytest over `source` as a test file, with the suite's policy loaded and `CI` set or not."""
    (tmp_path / "test_sample.py").write_text(source)
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only the policy: a quick run
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "suite_policy", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-q", *args, str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )


SKIPPING = """\
import pytest

def test_runs():
    pass

def test_needs_a_thing():
    pytest.skip("the thing is not installed")
"""


def test_a_skipped_test_fails_the_run_in_ci_and_says_which_and_why(tmp_path) -> None:
    done = run_pytest(tmp_path, SKIPPING, ci=True)
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout
    assert "skipped tests fail the run in CI" in done.stdout
    assert "test_sample.py::test_needs_a_thing: Skipped: the thing is not installed" in done.stdout


def test_outside_ci_a_skip_is_only_reported(tmp_path) -> None:
    done = run_pytest(tmp_path, SKIPPING, ci=False)
    assert done.returncode == pytest.ExitCode.OK, done.stdout
    assert "1 passed, 1 skipped" in done.stdout


def test_a_module_skipped_at_import_fails_the_run_in_ci(tmp_path) -> None:
    source = 'import pytest\n\npytest.importorskip("no_such_module_here")\n'
    done = run_pytest(tmp_path, source, ci=True)
    assert done.returncode != pytest.ExitCode.OK, done.stdout
    assert "test_sample.py: Skipped: could not import 'no_such_module_here'" in done.stdout


def test_only_a_gpu_test_may_skip_in_ci_and_only_on_a_machine_without_one(tmp_path) -> None:
    source = (
        "import pytest\n\n@pytest.mark.gpu\ndef test_on_the_gpu():\n"
        '    pytest.skip("no GPU here")\n'
    )
    done = run_pytest(tmp_path, source, ci=True)
    assert "1 skipped" in done.stdout
    if has_gpu():
        assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout
    else:
        assert done.returncode == pytest.ExitCode.OK, done.stdout


def test_markers_follow_the_fixtures_a_test_uses(tmp_path) -> None:
    source = """\
import pytest

@pytest.fixture
def start_server():
    return None

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
"""
    listed = {}
    for marker in ("e2e", "s3", "browser", "not e2e and not s3 and not browser"):
        done = run_pytest(tmp_path, source, "--collect-only", "-m", marker, ci=False)
        listed[marker] = [line.split("::")[1] for line in done.stdout.splitlines() if "::" in line]
    assert listed == {
        "e2e": ["test_serves"],
        "s3": ["test_stores"],
        "browser": ["test_clicks"],
        "not e2e and not s3 and not browser": ["test_computes"],
    }


def test_a_server_started_by_a_test_not_marked_e2e_is_refused(tmp_path) -> None:
    source = 'from servers import Server\n\ndef test_sneaks_a_server():\n    Server(["."])\n'
    done = run_pytest(tmp_path, source, ci=False)
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout
    assert "test_sneaks_a_server starts a server but is not marked e2e" in done.stdout


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


def test_a_module_marked_as_a_whole_is_not_imported_when_m_leaves_all_its_tests_out(
    tmp_path,
) -> None:
    source = "import pytest\nimport no_such_heavy_library\n\npytestmark = pytest.mark.slow\n"
    skipped = run_pytest(tmp_path, source, "-m", "not e2e and not slow", ci=False)
    assert skipped.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, skipped.stdout
    imported = run_pytest(tmp_path, source, "-m", "slow or e2e", ci=False)
    assert "No module named 'no_such_heavy_library'" in imported.stdout


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
