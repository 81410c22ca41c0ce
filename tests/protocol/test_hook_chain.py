"""flaskserve's own hooks run as one Flask hook of each kind; an application's hooks still run
after them, see what they set, and can still answer or change the response."""

from __future__ import annotations

from flask import Response, request

from flaskserve.app import create_app
from flaskserve.protocol.http_context import current
from flaskserve.settings import Settings

BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}


def test_flaskserve_registers_one_hook_of_each_kind(digits_repo) -> None:
    app = create_app(Settings(repository=str(digits_repo)))
    assert len(app.before_request_funcs[None]) == 1
    assert len(app.after_request_funcs[None]) == 1
    assert len(app.teardown_request_funcs[None]) == 1


def test_an_applications_own_hooks_run_after_flaskserves(digits_repo) -> None:
    app = create_app(Settings(repository=str(digits_repo)))
    seen: list[str] = []

    @app.before_request
    def mine() -> Response | None:
        seen.append(current().request_id or "")  # set by flaskserve's hook, which ran first
        if request.headers.get("X-Block"):
            return Response("blocked by the application", status=418)
        return None

    @app.after_request
    def tag(response: Response) -> Response:
        response.headers["X-Mine"] = "1"
        return response

    client = app.test_client()
    answer = client.post("/v2/models/digits/infer", json=BODY, headers={"X-Request-ID": "abc"})
    assert answer.status_code == 200
    assert seen == ["abc"]
    assert answer.headers["X-Mine"] == "1"
    assert answer.headers["X-Request-ID"] == "abc"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"

    blocked = client.post("/v2/models/digits/infer", json=BODY, headers={"X-Block": "1"})
    assert blocked.status_code == 418
    assert blocked.headers["X-Mine"] == "1"
    assert blocked.headers["X-Request-ID"]


def test_a_refusal_by_flaskserves_guard_skips_the_applications_hooks(digits_repo) -> None:
    app = create_app(Settings(repository=str(digits_repo)))
    ran: list[bool] = []
    app.before_request(lambda: ran.append(True))
    answer = app.test_client().post(
        "/v2/models/digits/infer", data="x=1", content_type="application/x-www-form-urlencoded"
    )
    assert answer.status_code == 415
    assert answer.get_json()["error"]
    assert ran == []
