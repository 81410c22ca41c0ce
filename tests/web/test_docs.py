"""/docs is Swagger UI (vendored, pinned) on /openapi.json: it renders in Chromium, "Try it out"
runs a model through the browser guards, and "Authorize" carries an API key under `--auth`."""

from __future__ import annotations

import json

from playwright.sync_api import expect

from flaskserve.gate.keys import add_key

INFER = "/v2/models/digits/infer"


def try_digits(page) -> dict:
    """Open the digits model's infer operation, send its example, and return the answer."""
    operation = page.locator(".opblock", has=page.locator(f"[data-path='{INFER}']")).first
    operation.locator(".opblock-summary").first.click()
    operation.locator("button.try-out__btn").click()
    operation.locator("button.execute").click()
    answer = operation.locator(".live-responses-table .response").first
    expect(answer.locator(".response-col_status")).to_contain_text("200")
    return json.loads(answer.locator(".response-col_description pre").first.inner_text())


def test_swagger_ui_renders_and_tries_the_digits_model(start_server, playground_repo, page,
                                                       screenshots) -> None:
    server = start_server([str(playground_repo), "--workers", "1"])
    page.goto(server.url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("flaskserve")
    # Each model's own group comes first, with its example request.
    first = page.locator(".opblock-tag-section").first
    expect(first.locator(".opblock-tag")).to_contain_text("Model digits")
    answer = try_digits(page)
    assert answer["model_name"] == "digits"
    assert {o["name"] for o in answer["outputs"]} == {"label", "probabilities"}
    assert next(o for o in answer["outputs"] if o["name"] == "label")["data"] == [7]
    page.screenshot(path=str(screenshots / "docs.png"), full_page=False)
    server.wait_for_log(f'"POST {INFER} HTTP/1.1" 200')


def test_swagger_ui_authorize_sends_the_key_under_auth(start_server, playground_repo, page,
                                                      tmp_path, screenshots) -> None:
    keys = tmp_path / "keys.toml"
    key = add_key(keys, "alice", models=("digits",))
    server = start_server([str(playground_repo), "--workers", "1", "--auth", str(keys)])
    page.goto(server.url + "/docs")
    page.locator("button.authorize").first.click()
    dialog = page.locator(".dialog-ux .modal-ux")
    bearer = dialog.locator(".auth-container", has_text="bearer").first
    bearer.locator("input").fill(key)
    bearer.locator("button.authorize").click()
    dialog.locator("button.btn-done").first.click()
    answer = try_digits(page)
    assert answer["model_name"] == "digits"
    assert key not in page.url
    page.screenshot(path=str(screenshots / "docs-auth.png"), full_page=False)


def test_swagger_ui_without_a_key_shows_the_401_under_auth(start_server, playground_repo, page,
                                                           tmp_path) -> None:
    keys = tmp_path / "keys.toml"
    add_key(keys, "alice")
    server = start_server([str(playground_repo), "--workers", "1", "--auth", str(keys)])
    page.goto(server.url + "/docs")
    operation = page.locator(".opblock", has=page.locator(f"[data-path='{INFER}']")).first
    operation.locator(".opblock-summary").first.click()
    operation.locator("button.try-out__btn").click()
    operation.locator("button.execute").click()
    answer = operation.locator(".live-responses-table .response").first
    expect(answer.locator(".response-col_status")).to_contain_text("401")
    assert "needs an API key" in answer.inner_text()
