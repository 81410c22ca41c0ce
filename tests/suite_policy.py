"""How the suite sorts and judges its own tests: markers set from fixtures, skips failing CI.

Markers (registered in pyproject.toml) are set here from what a test uses, so a new test that
starts a server or a browser cannot forget its marker and slip into `make test-fast`:

- `e2e`: starts a real `flaskserve` process: uses `start_server` or `digits_server`, or the test
  or one of its fixtures names `Server` or `FLASKSERVE` (tests/servers.py); `servers.Server`
  refuses to start in a test without the marker, should a helper hide it from this check;
- `s3`: needs the SeaweedFS server (`s3_server`);
- `browser`: drives Chromium (`browser`, `page`);
- `slow`, `gpu`: set by hand.

A module whose `pytestmark` line marks it as a whole is not even imported when `-m` leaves out
every test it has: importing torch or sentence-transformers costs more than the unit layer's
tests themselves.

With `CI=true` a skipped test fails the run: a skip in CI is a test that silently stopped
testing anything (a missing dependency, a guard that hides a regression). The one exception is
a test marked `gpu` on a machine without a GPU.

conftest.py imports the hooks; a module of its own so tests can load it with `-p suite_policy`
into a pytest run of their own and check it.
"""

from __future__ import annotations

import glob
import inspect
import itertools
import os
import re
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from _pytest.mark.expression import Expression  # the parser of `-m` itself

import servers

#: Fixtures that set a marker on every test that uses them, directly or through other fixtures.
MARKED_FIXTURES = {
    "e2e": {"start_server", "digits_server"},
    "s3": {"s3_server"},
    "browser": {"browser"},
}

#: "node id: reason" of each skip this run that CI does not excuse.
_skips: list[str] = []


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def has_gpu() -> bool:
    """An NVIDIA device node is there (no import of torch, which is slow and may be CPU-only)."""
    return bool(glob.glob("/dev/nvidia[0-9]*"))


#: Names that start a `flaskserve` process when a test or a fixture it uses refers to them.
SERVER_NAMES = {"Server", "FLASKSERVE"}

_MODULE_MARKS = re.compile(r"^pytestmark\s*=\s*(\[[^\]]*\]|.*)$", re.MULTILINE)
_WORDS = re.compile(r"[\w.:+\-\[\]\\/]+")


def module_marks(path: Path) -> set[str]:
    """The markers a test module's `pytestmark = ...` sets on all its tests (read, not run)."""
    found = _MODULE_MARKS.search(path.read_text(encoding="utf-8"))
    return set(re.findall(r"pytest\.mark\.(\w+)", found.group(1))) if found else set()


def could_select(expression: str, marks: set[str]) -> bool:
    """Whether `-m expression` selects a test that has `marks`, whatever other marks it has."""
    compiled = Expression.compile(expression)
    others = sorted(set(_WORDS.findall(expression)) - {"and", "or", "not"} - marks)
    if len(others) > 10:
        return True
    for chosen in itertools.product((False, True), repeat=len(others)):
        present = marks | {name for name, on in zip(others, chosen, strict=True) if on}
        if compiled.evaluate(present.__contains__):
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    expression = config.option.markexpr
    if expression and collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        marks = module_marks(collection_path)
        if marks and not could_select(expression, marks):
            return True
    return None


def _names(code: types.CodeType) -> set[str]:
    """The global and attribute names a function's code refers to, nested functions included."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _names(constant)
    return names


def _functions(item: pytest.Item) -> Iterator[object]:
    """The test function and the function of every fixture it uses, directly or not."""
    yield getattr(item, "function", None)
    info = getattr(item, "_fixtureinfo", None)
    for fixturedefs in info.name2fixturedefs.values() if info else ():
        for fixturedef in fixturedefs:
            yield fixturedef.func


def starts_a_server(item: pytest.Item) -> bool:
    for function in _functions(item):
        code = getattr(inspect.unwrap(function), "__code__", None) if function else None
        if code is not None and _names(code) & SERVER_NAMES:
            return True
    return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in MARKED_FIXTURES.items():
            if used & fixtures:
                item.add_marker(marker)
        if item.get_closest_marker("e2e") is None and starts_a_server(item):
            item.add_marker("e2e")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tell `servers.Server` which test is starting one (before the test's fixtures run)."""
    servers.running_test = item


def pytest_runtest_teardown() -> None:
    servers.running_test = None


def pytest_configure() -> None:
    _skips.clear()


def _excused(report: pytest.TestReport | pytest.CollectReport) -> bool:
    return "gpu" in getattr(report, "keywords", {}) and not has_gpu()


def _record_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and not _excused(report):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        _skips.append(f"{report.nodeid}: {reason}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _record_skip(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    # A module skipped as a whole (`pytest.importorskip` at its top) is skipped at collection.
    _record_skip(report)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if in_ci() and _skips and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if in_ci() and _skips:
        terminalreporter.section("skipped tests fail the run in CI (CI=true)", red=True)
        for line in _skips:
            terminalreporter.line(line, red=True)
        terminalreporter.line(
            "Every test must run in CI: install what it needs, or fix what it skips for. "
            "Only tests marked `gpu` may skip, on a machine without a GPU."
        )
