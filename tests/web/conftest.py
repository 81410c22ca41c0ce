"""A repository with one model per playground widget, and Debian's Chromium for browser tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from letters_model import write_letters
from python_models import python_toml, write_python_model

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-output" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
#: No sandbox (containers), and nothing that phones home: this machine has no internet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: A tabular model with three inputs of different datatypes: the JSON editor's case.
TABULAR_TOML = python_toml(
    "tabular:Tabular",
    {"features": ("FP64", [-1, 3]), "counts": ("INT32", [-1, 2]), "flag": ("BOOL", [-1])},
    {"score": ("FP64", [-1]), "positive": ("BOOL", [-1])},
)
TABULAR_PY = """\
class Tabular:
    def predict(self, features, counts, flag):
        score = features.sum(axis=1) + counts.sum(axis=1) + flag
        return {"score": score, "positive": score > 0}
"""


@pytest.fixture(scope="session")
def playground_repo(tmp_path_factory: pytest.TempPathFactory, digits_model: Path) -> Path:
    """digits (drawing pad), letters (text with embeddings) and tabular (JSON editor)."""
    root = tmp_path_factory.mktemp("playground")
    shutil.copytree(digits_model, root / "digits")
    write_letters(root)
    write_python_model(root, "tabular", TABULAR_TOML, TABULAR_PY)
    return root


@pytest.fixture(scope="session")
def browser() -> Iterator:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing; `make test` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser) -> Iterator:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if _is_script_error(msg) else None)
    yield page
    context.close()
    assert not errors, f"the page logged errors: {errors}"


@pytest.fixture(scope="session")
def screenshots() -> Path:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    return SCREENSHOTS


def _is_script_error(message) -> bool:
    """Console errors from the page's scripts; an HTTP 4xx that a test provokes is not one."""
    return message.type == "error" and not message.text.startswith("Failed to load resource")
