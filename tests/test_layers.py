"""Layers import only downward: the core runs without the web stack (see [tool.importlinter])."""

from __future__ import annotations

import subprocess
import sys

import pytest

WEB_STACK = ("flask", "werkzeug", "gunicorn", "granian", "jinja2")


@pytest.mark.parametrize(
    "module",
    [
        "flaskserve.core",
        "flaskserve.core.model",
        "flaskserve.core.dataplane",
        "flaskserve.core.batching",
        "flaskserve.runtimes.registry",
        "flaskserve.runtimes.sklearn",
    ],
)
def test_core_and_runtimes_import_without_the_web_stack(module: str) -> None:
    probe = (
        f"import sys, {module}\n"
        f"print(','.join(sorted(m for m in {WEB_STACK!r} if m in sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "", f"importing {module} loaded {result.stdout.strip()}"


def test_the_package_root_still_offers_its_version_and_api() -> None:
    import flaskserve
    from flaskserve.protocol import route_policy
    from flaskserve.version import __version__

    assert flaskserve.__version__ == __version__
    assert callable(flaskserve.create_app) and flaskserve.ModelServer is not None
    assert flaskserve.open_route is route_policy.open_route
