"""The chat page of a generative model, in Chromium: text appears as its tokens arrive."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

GATED_PY = '''\
import time
from pathlib import Path


class Gated:
    def predict(self, text_input):
        # A chat reaches a Python model as role-prefixed lines: the gate is the path in them.
        gate = Path(next(word for word in text_input.split() if word.startswith("/")))
        yield "first "
        deadline = time.monotonic() + 60
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        yield "second"
'''


@pytest.fixture
def chat_repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "gated" / "1").mkdir(parents=True)
    (root / "gated" / "1" / "gated.py").write_text(GATED_PY)
    (root / "gated" / "model.toml").write_text('runtime = "python"\nentrypoint = "gated:Gated"\n')
    return root


def test_the_chat_page_shows_tokens_as_they_arrive(
    start_server, chat_repo: Path, tmp_path: Path, page, screenshots
) -> None:
    server = start_server([str(chat_repo)])
    gate = tmp_path / "open"
    page.goto(server.url + "/models/gated")
    expect(page.locator("#code-openai")).to_contain_text("stream=True")
    expect(page.locator("#code-tritonclient")).to_contain_text("async_stream_infer")
    expect(page.locator("#code-curl")).to_contain_text("generate_stream")
    page.fill("#chat-input", f"open {gate}")
    page.click("#chat-send")
    answer = page.locator(".chat-assistant .chat-text")
    # The model has sent "first " and waits for the gate: the page shows it already.
    expect(answer).to_have_text(re.compile(r"^first\s*$"))
    expect(answer).to_have_attribute("data-streaming", "true")
    gate.write_text("open")
    expect(answer).to_have_text("first second")
    expect(page.locator("#chat-status")).to_contain_text("2 completion tokens")
    page.screenshot(path=str(screenshots / "chat.png"), full_page=True)
