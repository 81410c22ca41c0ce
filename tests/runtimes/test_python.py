"""Python models: module:Class from a version folder, and the decorator API."""

from __future__ import annotations

import numpy as np
import pytest

from flaskserve import ModelServer, Tensor
from flaskserve.core.config import read_model_config
from flaskserve.core.errors import ModelLoadError
from flaskserve.runtimes import python as python_runtime
from python_models import SCALED_PY, SCALED_TOML, python_toml, write_python_model

INTEGERS = ("INT64", [-1])


def arith_toml(entrypoint: str) -> str:
    inputs = {"a": INTEGERS, "b": INTEGERS}
    return python_toml(entrypoint, inputs, {"sum": INTEGERS, "product": INTEGERS})


ARITH = """\
class Arith:
    def load(self):
        self.loaded = True

    def predict(self, a, b):
        assert self.loaded
        return a + b, a * b
"""


def load(tmp_path, entrypoint="arith:Arith", source=ARITH):
    version = write_python_model(tmp_path, "m", arith_toml(entrypoint), source, module="arith")
    return python_runtime.load(read_model_config(tmp_path / "m"), "1", version)


def test_class_from_the_version_folder_gets_one_argument_per_input(tmp_path) -> None:
    model = load(tmp_path)
    out = model.predict({"a": np.array([1, 2]), "b": np.array([3, 4])})
    assert out["sum"].tolist() == [4, 6]
    assert out["product"].tolist() == [3, 8]


@pytest.mark.parametrize(
    ("entrypoint", "source", "message"),
    [
        ("arith", ARITH, "module:Class"),
        ("arith:Nope", ARITH, "no attribute 'Nope'"),
        ("missing:Arith", ARITH, "no missing.py"),
        ("arith:Arith", "import not_a_module\n", "importing arith.py failed"),
    ],
)
def test_entrypoint_mistakes_are_load_errors(tmp_path, entrypoint, source, message) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load(tmp_path, entrypoint, source)


def test_decorated_functions_serve_and_the_app_takes_user_routes() -> None:
    server = ModelServer()

    @server.model(
        "double", inputs=[Tensor("x", "FP32", [-1, 2])], outputs=[Tensor("y", "FP32", [-1, 2])]
    )
    def double(x):
        return x * 2

    app = server.app

    @app.route("/custom")
    def custom():
        return {"custom": True}

    client = app.test_client()
    response = client.post(
        "/v2/models/double/infer",
        json={"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, 2]}]},
    )
    assert response.status_code == 200
    assert response.json["outputs"][0]["data"] == [3.0, 4.0]
    assert client.get("/custom").json == {"custom": True}


def test_a_model_breaking_its_promise_fails_without_a_traceback() -> None:
    server = ModelServer()

    @server.model("liar", inputs=[Tensor("x", "FP32", [-1])], outputs=[Tensor("y", "FP32", [-1])])
    def liar(x):
        return {"z": x}

    @server.model("crash", inputs=[Tensor("x", "FP32", [-1])], outputs=[Tensor("y", "FP32", [-1])])
    def crash(x):
        raise ZeroDivisionError("boom")

    client = server.app.test_client()
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}
    liar_response = client.post("/v2/models/liar/infer", json=body)
    assert liar_response.status_code == 500
    assert "returned no output 'y'" in liar_response.json["error"]
    crash_response = client.post("/v2/models/crash/infer", json=body)
    assert crash_response.status_code == 500
    request_id = crash_response.headers["X-Request-ID"]
    assert crash_response.json == {
        "error": f"model 'crash' failed (ZeroDivisionError); request id {request_id}, "
        "see the server log"
    }
    assert "Traceback" not in crash_response.get_data(as_text=True)


def scaled_request(parameters: dict | None = None, name: str = "x") -> dict:
    body: dict = {"inputs": [{"name": name, "shape": [2], "datatype": "INT64", "data": [1, 2]}]}
    if parameters is not None:
        body["parameters"] = parameters
    return body


def outputs_of(response) -> dict:
    assert response.status_code == 200, response.get_json()
    return {output["name"]: output["data"] for output in response.get_json()["outputs"]}


@pytest.mark.parametrize("max_batch_size", [0, 8])
def test_a_predict_that_declares_parameters_gets_the_requests_parameters(
    tmp_path, max_batch_size
) -> None:
    batching = f"[batching]\nmax_batch_size = {max_batch_size}\n" if max_batch_size else ""
    write_python_model(tmp_path, "scaled", SCALED_TOML + batching, SCALED_PY)
    client = ModelServer(str(tmp_path)).app.test_client()
    infer = "/v2/models/scaled/infer"
    assert outputs_of(client.post(infer, json=scaled_request({"scale": 3}))) == {
        "y": [3, 6], "count": [1, 1],
    }
    assert outputs_of(client.post(infer, json=scaled_request())) == {"y": [1, 2], "count": [0, 0]}


def test_a_predict_without_a_parameters_keyword_is_called_as_before() -> None:
    server = ModelServer()
    seen: list[dict] = []

    @server.model("keywords", inputs=[Tensor("x", "INT64", [-1])],
                  outputs=[Tensor("y", "INT64", [-1])])
    def keywords(**arrays):  # takes any keyword, yet declares no `parameters`
        seen.append(arrays)
        return arrays["x"]

    @server.model("named", inputs=[Tensor("parameters", "INT64", [-1])],
                  outputs=[Tensor("y", "INT64", [-1])])
    def named(parameters):  # an input of that name: the input, not the request's
        return parameters * 10

    client = server.app.test_client()
    answer = client.post("/v2/models/keywords/infer", json=scaled_request({"scale": 3}))
    assert outputs_of(answer) == {"y": [1, 2]} and list(seen[0]) == ["x"]
    answer = client.post(
        "/v2/models/named/infer", json=scaled_request({"scale": 3}, name="parameters")
    )
    assert outputs_of(answer) == {"y": [10, 20]}
