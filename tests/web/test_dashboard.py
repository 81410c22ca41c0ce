"""/dashboard in Chromium while the test sends load: charts drawn from every worker's counters,
and the usage per key that only admin keys see in full."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from playwright.sync_api import expect

from flaskserve.gate.keys import add_key
from flaskserve.web.examples import SEVEN

ROOT = Path(__file__).resolve().parents[2]
UPDATE_DOCS_IMAGES = os.environ.get("FLASKSERVE_UPDATE_DOCS_IMAGES") == "1"
DIGITS = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": SEVEN}]}
#: Wrong shape: a 400, which the errors chart shows.
BAD = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0]}]}


@contextmanager
def load(url: str, key: str | None = None, model: str = "digits",
         threads: int = 2) -> Iterator[list[int]]:
    """Requests to `model` from `threads` threads until the block ends (one in ten malformed);
    yields the count of answers so far."""
    stop = threading.Event()
    answered = [0]
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    def send() -> None:
        with requests.Session() as session:
            n = 0
            while not stop.is_set():
                n += 1
                body = BAD if n % 10 == 0 else DIGITS
                session.post(f"{url}/v2/models/{model}/infer", json=body, headers=headers,
                             timeout=10)
                answered[0] += 1

    senders = [threading.Thread(target=send, daemon=True) for _ in range(threads)]
    for sender in senders:
        sender.start()
    try:
        yield answered
    finally:
        stop.set()
        for sender in senders:
            sender.join(timeout=15)


def chart_max(page, chart: str) -> float:
    return float(page.locator(f"#{chart}").get_attribute("data-max") or 0)


def wait_for_data(page, *charts: str) -> None:
    for chart in charts:
        expect(page.locator(f"#{chart} canvas")).to_have_count(1)
        page.wait_for_function(
            "id => Number(document.getElementById(id).dataset.max || 0) > 0", arg=chart,
            timeout=30_000,
        )


def test_dashboard_charts_live_traffic_from_every_worker(start_server, digits_repo, page,
                                                         tmp_path, screenshots) -> None:
    server = start_server([str(digits_repo), "--workers", "2",
                           "--usage-db", str(tmp_path / "usage.sqlite3")])
    # More senders when refreshing the README's picture, so batches and queues show.
    with load(server.url, threads=8 if UPDATE_DOCS_IMAGES else 2):
        page.goto(server.url + "/dashboard")
        wait_for_data(page, "chart-rps", "chart-latency", "chart-batch", "chart-errors",
                      "chart-usage")
        row = page.locator("#now tbody tr", has_text="digits")
        assert float(row.locator("td").nth(0).inner_text()) > 0  # requests/s
        assert float(row.locator("td").nth(3).inner_text()) > 0  # p99 ms
        expect(page.locator("#usage tbody tr", has_text="(no key)")).to_have_count(1)
        assert chart_max(page, "chart-batch") >= 1
        assert page.locator("#chart-tokens").is_hidden()  # no generation data: no panel
        page.screenshot(path=str(screenshots / "dashboard.png"), full_page=True)
        if UPDATE_DOCS_IMAGES:
            page.wait_for_timeout(60_000)  # a minute of lines for the README's picture
            (ROOT / "docs" / "images").mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ROOT / "docs" / "images" / "dashboard.png"),
                            full_page=True)


def test_only_admin_keys_see_every_keys_usage(start_server, playground_repo, page, tmp_path,
                                              screenshots) -> None:
    keys = tmp_path / "keys.toml"
    admin = add_key(keys, "ops", admin=True)
    alice = add_key(keys, "alice", models=("digits",))
    bob = add_key(keys, "bob", models=("digits", "tabular"))
    server = start_server([str(playground_repo), "--workers", "1", "--auth", str(keys)])
    data = f"{server.url}/dashboard/data"
    assert requests.get(data, timeout=10).status_code == 401
    with load(server.url, alice), load(server.url, bob):
        page.goto(server.url + "/dashboard")
        expect(page.locator("#key-status")).to_contain_text("needs an API key")
        page.fill("#api-key", admin)
        page.click("#key-form button[type=submit]")
        wait_for_data(page, "chart-rps", "chart-usage")
        expect(page.locator("#usage tbody tr", has_text="alice")).to_have_count(1)
        expect(page.locator("#usage tbody tr", has_text="bob")).to_have_count(1)
        page.screenshot(path=str(screenshots / "dashboard-admin.png"), full_page=True)

        page.fill("#api-key", alice)
        page.click("#key-form button[type=submit]")
        expect(page.locator("#usage-note")).to_contain_text("Only your key's usage (alice)")
        expect(page.locator("#usage tbody tr", has_text="alice")).to_have_count(1)
        assert page.locator("#usage tbody tr", has_text="bob").count() == 0
        assert "tabular" not in page.inner_text("#now")  # a model alice may not use

    for key, who in ((alice, {"alice"}), (bob, {"bob"}), (admin, {"alice", "bob"})):
        body = requests.get(data, headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
        assert {row["key"] for row in body["usage"]["minutes"]} == who
    body = requests.get(data, headers={"X-API-Key": alice}, timeout=10).json()
    assert set(body["models"]) == {"digits"} and body["usage"]["scope"] == "own"
    assert body["models"]["digits"]["requests"]["200"] > 0
