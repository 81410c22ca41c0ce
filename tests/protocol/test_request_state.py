"""What flaskserve knows of an HTTP request lives in one typed object under one environ key
(`protocol.http_context.RequestState`), which every layer fills in and reads."""

from __future__ import annotations

import time

import pytest
from flask import Flask, Response, request

from flaskserve.app import create_app, services_of
from flaskserve.gate.keys import add_key
from flaskserve.protocol.http_context import STATE_KEY, RequestState, current
from flaskserve.settings import Settings

BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}


def test_a_metered_cross_origin_inference_leaves_one_flaskserve_key_in_the_environ(
    digits_repo, tmp_path
) -> None:
    keys_file = tmp_path / "keys.toml"
    key = add_key(keys_file, "alice", models=("digits",))
    app = create_app(
        Settings(
            repository=str(digits_repo),
            auth=str(keys_file),
            cors_origins="https://app.example.com",
        )
    )
    seen: dict[str, object] = {}

    @app.after_request
    def look(response: Response) -> Response:
        seen.update(request.environ)
        state = current()
        seen["state"] = (state.request_id, state.model, state.key_id, state.cors_origin)
        return response

    answer = app.test_client().post(
        "/v2/models/digits/infer",
        json=BODY,
        headers={
            "Authorization": f"Bearer {key}",
            "Origin": "https://app.example.com",
            "X-Request-ID": "req-1",
        },
    )
    assert answer.status_code == 200, answer.get_json()
    assert answer.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert [name for name in seen if name.startswith("flaskserve")] == [STATE_KEY]
    assert seen["state"] == ("req-1", "digits", "alice", "https://app.example.com")
    assert isinstance(seen[STATE_KEY], RequestState)


def test_a_misspelt_field_is_an_error_not_a_silent_none() -> None:
    state = RequestState()
    with pytest.raises(AttributeError):
        state.modle = "digits"  # type: ignore[attr-defined]


def test_an_app_reaches_its_services_through_one_typed_accessor(digits_repo) -> None:
    app = create_app(Settings(repository=str(digits_repo)))
    services = services_of(app)
    assert services is not None
    assert services.dataplane.repository.get("digits", None).name == "digits"
    assert services.gate.admission.waiting == 0
    assert services_of(type(app)("other")) is None


def arrivals_of(app: Flask) -> list[float]:
    """The arrival time of each inference's context, noted as its response leaves."""
    arrivals: list[float] = []

    @app.after_request
    def look(response: Response) -> Response:
        context = current().context
        assert context is not None
        arrivals.append(context.arrived)
        return response

    return arrivals


@pytest.mark.parametrize("path", ["/v2/models/digits/infer", "/v1/models/digits:predict"])
def test_an_inference_arrived_when_the_engine_queued_it_not_when_a_thread_took_it(
    digits_repo, path
) -> None:
    app = create_app(Settings(repository=str(digits_repo)))
    queued = time.monotonic() - 1.0  # it waited a second for a thread
    arrivals = arrivals_of(app)

    body = BODY if path.startswith("/v2") else {"instances": [[0.0] * 64]}
    answer = app.test_client().post(
        path, json=body, environ_overrides={STATE_KEY: RequestState(queued)}
    )
    assert answer.status_code == 200, answer.get_json()
    assert arrivals == [queued]


def test_without_the_engine_an_inference_arrived_when_its_first_hook_ran(digits_repo) -> None:
    app = create_app(Settings(repository=str(digits_repo)))
    arrivals = arrivals_of(app)

    before = time.monotonic()
    assert app.test_client().post("/v2/models/digits/infer", json=BODY).status_code == 200
    assert before <= arrivals[0] <= time.monotonic()
