"""The playground in a real browser (Debian's Chromium via Playwright) against `flaskserve serve`.

Drawing a digit with mouse events and getting it recognised checks the whole chain: pointer
handling, the 8x8 downsampling (it must resemble scikit-learn's digits, or the model guesses
wrong), the V2 call and the chart.
"""

from __future__ import annotations

import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import expect

from flaskserve.gate.keys import add_key
from flaskserve.models import minilm

ROOT = Path(__file__).resolve().parents[2]

#: Strokes on the 280x280 pad, as a person would draw them.
SEVEN = [[(70, 60), (210, 60), (120, 230)]]
ONE = [[(115, 70), (150, 40), (150, 240)]]
#: Set to 1 to refresh the README's screenshot from this test.
UPDATE_DOCS_IMAGES = os.environ.get("FLASKSERVE_UPDATE_DOCS_IMAGES") == "1"


def draw(page, strokes) -> None:
    box = page.locator("#pad").bounding_box()
    scale = box["width"] / 280
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * scale, box["y"] + y * scale)
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * scale, box["y"] + y * scale, steps=12)
        page.mouse.up()


def predicted(page) -> tuple[str, list[float], list[float]]:
    """The label shown, the ten bar values (percent) and the pixels the page sent."""
    expect(page.locator("#bars li")).to_have_count(10)
    values = [float(v.rstrip("%")) for v in page.locator("#bars .bar-value").all_inner_texts()]
    sent = json.loads(page.input_value("#request"))["inputs"][0]["data"]
    return page.inner_text("#label"), values, sent


def test_index_and_snippets(start_server, playground_repo, page, screenshots) -> None:
    server = start_server([str(playground_repo), "--workers", "1"])
    page.goto(server.url + "/")
    assert page.locator("table.models tbody tr").count() == 3
    text = page.inner_text("table.models")
    assert "digits" in text and "READY" in text and "input FP32 [-1, 64]" in text
    assert "sentence BYTES [-1]" in text and "counts INT32 [-1, 2]" in text
    page.screenshot(path=str(screenshots / "index.png"), full_page=True)

    page.click("text=letters")
    assert page.url == server.url + "/models/letters"
    curl = page.inner_text("#code-curl")
    assert curl.startswith(f"curl -s {server.url}/v2/models/letters/infer")
    assert "tritonclient.http" in page.inner_text("#code-tritonclient")



def test_digits_pad_recognises_mouse_and_touch_drawings(start_server, playground_repo, page,
                                                        browser, screenshots) -> None:
    server = start_server([str(playground_repo), "--workers", "1"])
    page.goto(server.url + "/models/digits")

    draw(page, SEVEN)
    label, bars, pixels = predicted(page)
    assert label == "7"
    assert len(bars) == 10 and max(bars) == bars[7] and 99 <= sum(bars) <= 101
    assert len(pixels) == 64 and all(0 <= p <= 16 for p in pixels) and sum(pixels) > 150
    assert page.locator("#bars li.best").inner_text().startswith("7")
    page.screenshot(path=str(screenshots / "digits-7.png"), full_page=True)
    if UPDATE_DOCS_IMAGES:
        (ROOT / "docs" / "images").mkdir(parents=True, exist_ok=True)
        bottom = page.locator("#bars").bounding_box()
        page.set_viewport_size({"width": 1100, "height": int(bottom["y"] + bottom["height"] + 24)})
        page.screenshot(path=str(ROOT / "docs" / "images" / "playground-digits.png"))
        page.set_viewport_size({"width": 1100, "height": 900})

    page.click("#clear")
    assert page.inner_text("#label") == "\N{EN DASH}"
    draw(page, ONE)
    expect(page.locator("#label")).to_have_text("1")
    label, bars, _ = predicted(page)
    assert max(bars) == bars[1]
    page.screenshot(path=str(screenshots / "digits-1.png"), full_page=True)

    page.focus("#sample")  # the keyboard path: no drawing needed
    page.keyboard.press("Enter")
    expect(page.locator("#label")).to_have_text("7")

    phone = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True,
                                is_mobile=True)
    touch_page = phone.new_page()
    touch_page.goto(server.url + "/models/digits")
    box = touch_page.locator("#pad").bounding_box()
    scale = box["width"] / 280
    points = [(70, 60), (140, 60), (210, 60), (180, 115), (150, 172), (120, 230)]
    touches = [(box["x"] + x * scale, box["y"] + y * scale) for x, y in points]
    session = phone.new_cdp_session(touch_page)
    for kind, (x, y) in [("touchStart", touches[0])] + [("touchMove", t) for t in touches[1:]]:
        session.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y}]})
    session.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    expect(touch_page.locator("#bars li")).to_have_count(10)
    assert touch_page.inner_text("#label") == "7"
    touch_page.screenshot(path=str(screenshots / "digits-phone.png"), full_page=True)
    phone.close()


def test_text_and_json_pages(start_server, playground_repo, page, screenshots) -> None:
    server = start_server([str(playground_repo), "--workers", "1"])
    page.goto(server.url + "/models/letters")
    page.fill("#sentences", "the cat sat on the mat\nthe cat sat on a mat\nzzz qqq xxx")
    page.click("#text-form button[type=submit]")
    page.wait_for_selector("table.similarity")

    def cell(i: int, j: int) -> float:
        return float(page.inner_text(f"table.similarity td[data-i='{i}'][data-j='{j}']"))

    assert cell(0, 0) == pytest.approx(1.0, abs=1e-3)
    assert cell(0, 1) > 0.9 > cell(0, 2)
    assert cell(0, 1) == cell(1, 0)
    page.screenshot(path=str(screenshots / "letters.png"), full_page=True)

    page.goto(server.url + "/models/tabular")
    page.click("#json-form button[type=submit]")
    expect(page.locator("#json-status")).to_have_text(re.compile("^HTTP"))
    assert page.inner_text("#json-status").startswith("HTTP 200")
    answer = json.loads(page.inner_text("#response"))
    assert {o["name"] for o in answer["outputs"]} == {"score", "positive"}
    page.screenshot(path=str(screenshots / "tabular.png"), full_page=True)

    page.fill("#request", '{"inputs": [{"name": "features", "shape": [1, 2], '
                          '"datatype": "FP64", "data": [1, 2]}]}')
    page.click("#json-form button[type=submit]")
    expect(page.locator("#json-status")).to_contain_text("400")
    assert "error" in json.loads(page.inner_text("#response"))

    page.fill("#request", "{not json")
    page.click("#json-form button[type=submit]")
    assert page.inner_text("#json-status").startswith("Not valid JSON")


def test_minilm_page_compares_sentences(start_server, tmp_path, page, screenshots) -> None:
    minilm.build(tmp_path / "minilm")
    server = start_server([str(tmp_path), "--workers", "1"], timeout=240)
    page.goto(server.url + "/models/minilm")
    page.fill("#sentences", "A man is playing a guitar.\nSomeone plays the guitar.\n"
                            "Stock markets fell sharply today.")
    page.click("#text-form button[type=submit]")
    page.wait_for_selector("table.similarity", timeout=60_000)
    similar = float(page.inner_text("table.similarity td[data-i='0'][data-j='1']"))
    unrelated = float(page.inner_text("table.similarity td[data-i='0'][data-j='2']"))
    assert similar > 0.5 > unrelated
    page.screenshot(path=str(screenshots / "minilm.png"), full_page=True)



class _AttackerPage(BaseHTTPRequestHandler):
    """Another site: a blank page with no Content-Security-Policy of its own."""

    def do_GET(self) -> None:
        body = b"<!doctype html><title>another site</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


FORGE = """async (url) => {
  const body = JSON.stringify({inputs: [{name: "input", shape: [1, 64], datatype: "FP32",
                                         data: Array(64).fill(0)}]});
  await fetch(url, {method: "POST", mode: "no-cors", body: body,
                    headers: {"Content-Type": "text/plain"}});
  try {
    await fetch(url, {method: "POST", body: body, headers: {"Content-Type": "application/json"}});
    return "read";
  } catch (error) {
    return "blocked";
  }
}"""


def test_a_page_on_another_origin_cannot_run_a_model(start_server, playground_repo, browser):
    """Cross-site request forgery, tried for real: a page on another site (another port of
    127.0.0.1) posts a model request the way a hostile page would, without a CORS preflight
    (`no-cors`, text/plain), then as JSON (which needs a preflight)."""
    server = start_server([str(playground_repo), "--workers", "1"])
    attacker = ThreadingHTTPServer(("127.0.0.1", 0), _AttackerPage)
    thread = threading.Thread(target=attacker.serve_forever, daemon=True)
    thread.start()
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{attacker.server_address[1]}/")
        assert page.evaluate(FORGE, f"{server.url}/v2/models/digits/infer") == "blocked"
        # The forged request reached the server and was refused: the model never ran.
        server.wait_for_log('"POST /v2/models/digits/infer HTTP/1.1" 403', timeout=15)
        server.wait_for_log('"OPTIONS /v2/models/digits/infer HTTP/1.1" 403', timeout=15)
        assert '"POST /v2/models/digits/infer HTTP/1.1" 200' not in server.log
    finally:
        context.close()
        attacker.shutdown()
        attacker.server_close()
        thread.join(timeout=5)


def test_playground_uses_a_key_under_auth_and_never_shows_it(start_server, playground_repo,
                                                            page, tmp_path, screenshots) -> None:
    keys = tmp_path / "keys.toml"
    key = add_key(keys, "alice", models=("digits",))
    server = start_server([str(playground_repo), "--workers", "1", "--auth", str(keys)])
    page.goto(server.url + "/models/digits")
    for name in ("curl", "requests", "tritonclient"):
        assert "FLASKSERVE_API_KEY" in page.inner_text(f"#code-{name}"), name
    assert '-H "Authorization: Bearer $FLASKSERVE_API_KEY"' in page.inner_text("#code-curl")

    page.click("#sample")  # no key yet: the server refuses, the page says what to do
    expect(page.locator("#key-status")).to_contain_text("needs an API key")
    page.fill("#api-key", key)
    page.click("#key-form button[type=submit]")
    page.click("#sample")
    expect(page.locator("#label")).to_have_text("7")
    server.wait_for_log('"POST /v2/models/digits/infer HTTP/1.1" 200')
    page.screenshot(path=str(screenshots / "digits-key.png"), full_page=True)

    assert page.evaluate("sessionStorage.getItem('flaskserve.apiKey')") == key
    assert page.evaluate("localStorage.length") == 0
    assert key not in page.url and key not in page.content()  # the field's value is no attribute
    page.reload()  # the tab keeps the key: the next request is sent with it
    page.click("#sample")
    expect(page.locator("#label")).to_have_text("7")

    page.goto(server.url + "/docs")  # and /docs in the same tab is authorized with it
    expect(page.locator("button.authorize.locked")).to_be_visible()

    page.goto(server.url + "/models/digits")
    page.click("#forget-key")
    assert page.evaluate("sessionStorage.getItem('flaskserve.apiKey')") is None
