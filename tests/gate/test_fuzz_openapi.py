"""Schemathesis against the app's own `/openapi.json`: no generated request may get a 5xx.

Every operation the document lists is called with requests generated from its schema, valid
ones and deliberately invalid ones, against the real app (the digits model plus a Python model
with integer tensors and one with string tensors) through WSGI. Example counts are bounded and
the seed fixed, so CI runs the same cases in bounded time. The routes that load and unload
models are left out: unloading a model makes its later requests a legitimate 503.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from flaskserve import ModelServer, Tensor
from flaskserve.protocol.infer import HEADER_LENGTH

EXAMPLES = settings(
    max_examples=8,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def app(digits_repo):
    server = ModelServer(repository=digits_repo)
    for datatype in ("INT64", "BYTES"):
        server.model(
            f"echo_{datatype.lower()}",
            inputs=[Tensor("x", datatype, [-1, 2])],
            outputs=[Tensor("y", datatype, [-1, 2])],
        )(lambda x: x)
    return server.app


def _server_errors(operation, mode: GenerationMode) -> list[str]:
    """Requests of `mode` generated for `operation` that the app answered with a 5xx."""
    found: list[str] = []

    @EXAMPLES
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case) -> None:
        response = case.call()
        if response.status_code >= 500:
            found.append(
                f"{case.method} {case.formatted_path} ({mode.value}) -> "
                f"{response.status_code} {response.text[:200]}"
            )

    try:
        call()
    except Unsatisfiable:  # nothing in the operation can be made invalid (GET /)
        assert mode is GenerationMode.NEGATIVE
    return found


@pytest.mark.slow  # some hundred generated requests
def test_no_generated_request_gets_a_server_error(app) -> None:
    served = app.test_client().get("/openapi.json")
    assert served.status_code == 200, "the app must serve /openapi.json: the schema to fuzz"
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app).exclude(
        path_regex=r"^/v2/repository/models/"
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    failures = [
        failure
        for operation in operations
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        for failure in _server_errors(operation, mode)
    ]
    assert len(operations) >= 10
    assert failures == []


def test_non_finite_binary_input_to_a_sklearn_model_is_a_4xx(app) -> None:
    raw = np.full((1, 64), np.nan, np.float32).tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    )
    response = app.test_client().post(
        "/v2/models/digits/infer", data=header + raw, headers={HEADER_LENGTH: str(len(header))}
    )
    assert response.status_code == 400
    assert "NaN or infinity" in response.json["error"]
