"""/openapi.json: a valid OpenAPI 3.1 document listing every route, whose examples really work."""

from __future__ import annotations

import pytest
import requests
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource

from flaskserve.app import create_app
from flaskserve.settings import Settings
from flaskserve.web.openapi import openapi_path


@pytest.fixture(scope="module")
def app(playground_repo):
    return create_app(Settings(repository=str(playground_repo)))


@pytest.fixture(scope="module")
def document(app) -> dict:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def examples(document: dict):
    """(path, method, content type, example) for every request example on a concrete path."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            for media_type, media in content.items():
                for example in media.get("examples", {}).values():
                    if "{" not in path:
                        yield path, method, media_type, media["schema"], example["value"]


def test_document_is_valid_openapi_3_1(document) -> None:
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_every_served_route_and_method_is_documented(app, document) -> None:
    for rule in app.url_map.iter_rules():
        path = openapi_path(rule.rule)
        assert path in document["paths"], f"{rule.rule} is served but not documented"
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in document["paths"][path], f"{method} {rule.rule} missing"
    for expected in ("/v2/models/{name}/versions/{version}/infer", "/v2/repository/index",
                     "/v1/models/{name}:predict", "/invocations", "/home/{name}", "/metrics",
                     "/", "/models/{name}", "/docs", "/openapi.json"):
        assert expected in document["paths"]


def test_each_model_has_schemas_from_its_signature(document) -> None:
    schemas = document["components"]["schemas"]
    digits = schemas["model.digits.InferRequest"]["properties"]["inputs"]
    tensor = digits["items"]["oneOf"][0]["properties"]
    assert tensor["name"] == {"const": "input"} and tensor["datatype"] == {"const": "FP32"}
    assert tensor["shape"]["minItems"] == tensor["shape"]["maxItems"] == 2
    tabular = schemas["model.tabular.InferRequest"]["properties"]["inputs"]
    assert tabular["minItems"] == tabular["maxItems"] == 3
    names = {t["properties"]["name"]["const"] for t in tabular["items"]["oneOf"]}
    assert names == {"features", "counts", "flag"}
    outputs = schemas["model.letters.InferResponse"]["properties"]["outputs"]["items"]["oneOf"]
    assert outputs[0]["properties"]["datatype"] == {"const": "FP32"}


def test_examples_match_their_own_schemas(document) -> None:
    registry = Registry().with_resource("urn:doc", Resource.opaque(document))
    found = list(examples(document))
    assert {path for path, *_ in found} >= {
        "/v2/models/digits/infer", "/v2/models/letters/infer", "/v2/models/tabular/infer",
        "/v1/models/digits:predict", "/v1/models/tabular:predict",
    }
    for path, _method, _media_type, schema, value in found:
        ref = schema.get("$ref", "").replace("#", "urn:doc#")
        validator = OAS31Validator({"$ref": ref} if ref else schema, registry=registry)
        errors = list(validator.iter_errors(value))
        assert not errors, f"example of {path} breaks its schema: {errors[0].message}"


def test_response_examples_match_their_own_schemas(document) -> None:
    registry = Registry().with_resource("urn:doc", Resource.opaque(document))
    checked = 0
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                media = response.get("content", {}).get("application/json", {})
                if "example" not in media:
                    continue
                ref = media["schema"].get("$ref", "").replace("#", "urn:doc#")
                validator = OAS31Validator({"$ref": ref} if ref else media["schema"],
                                           registry=registry)
                errors = list(validator.iter_errors(media["example"]))
                assert not errors, f"{method} {path} {status}: {errors[0].message}"
                checked += 1
    assert checked > 20


def test_every_example_is_answered_200_by_a_real_server(start_server, playground_repo) -> None:
    server = start_server([str(playground_repo), "--workers", "1"])
    document = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    found = list(examples(document))
    assert len(found) >= 5
    for path, method, media_type, _schema, value in found:
        response = requests.request(
            method, server.url + path, json=value, headers={"Content-Type": media_type},
            timeout=30,
        )
        assert response.status_code == 200, f"{method} {path}: {response.text}"


def test_sagemaker_example_is_given_when_one_model_is_served(digits_repo) -> None:
    client = create_app(Settings(repository=str(digits_repo))).test_client()
    document = client.get("/openapi.json").get_json()
    validate(document)
    (_, _, _, _, value), = [e for e in examples(document) if e[0] == "/invocations"]
    response = client.post("/invocations", json=value)
    assert response.status_code == 200
    assert response.get_json()["outputs"][0]["data"] == [7]


def test_docs_page_is_swagger_ui_served_with_local_assets_only(app) -> None:
    client = app.test_client()
    page = client.get("/docs").get_data(as_text=True)
    assert "http://" not in page and "https://" not in page
    for asset in ("/assets/vendor/swagger-ui/swagger-ui-bundle.js",
                  "/assets/vendor/swagger-ui/swagger-ui.css", "/assets/docs.js"):
        assert asset in page
        assert client.get(asset).status_code == 200, asset
    assert "SwaggerUIBundle" in client.get("/assets/docs.js").get_data(as_text=True)


def test_key_schemes_parameter_and_response_examples_are_documented(document) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {**schemes["apiKey"], "in": "header", "name": "X-API-Key"}
    assert "security" not in document  # no --auth: no route needs a key
    parameters = document["paths"]["/v2/models/{name}/versions/{version}/infer"]["post"]
    examples = {p["name"]: p.get("example") for p in parameters["parameters"]}
    assert examples == {"name": "digits", "version": "1", "Inference-Header-Content-Length": None}
    infer = document["paths"]["/v2/models/digits/infer"]["post"]["responses"]
    ok = infer["200"]["content"]["application/json"]["example"]
    assert ok["model_name"] == "digits" and [o["name"] for o in ok["outputs"]] == [
        "label", "probabilities"]
    assert "error" in infer["400"]["content"]["application/json"]["example"]
    tags = [tag["name"] for tag in document["tags"]]
    assert tags[:3] == ["Model digits", "Model letters", "Model tabular"] and "V2" in tags


def test_under_auth_routes_that_need_a_key_say_so(playground_repo, tmp_path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text("")
    settings = Settings(repository=str(playground_repo), auth=str(keys))
    document = create_app(settings).test_client().get("/openapi.json").get_json()
    validate(document)
    assert document["security"] == [{"bearer": []}, {"apiKey": []}]
    paths = document["paths"]
    for path, method in (("/v2/health/live", "get"), ("/docs", "get"), ("/", "get"),
                         ("/openapi.json", "get")):
        assert paths[path][method]["security"] == [], path
    for path, method in (("/v2/models/digits/infer", "post"), ("/metrics", "get"),
                         ("/v2/models/{name}/infer", "post")):
        assert "security" not in paths[path][method], path
        assert "401" in paths[path][method]["responses"], path
    # and the document of a server without keys (built after) documents no 401 there
    plain = create_app(Settings(repository=str(playground_repo))).test_client()
    again = plain.get("/openapi.json").get_json()["paths"]
    assert "401" not in again["/metrics"]["get"]["responses"]


def test_routes_an_application_adds_are_documented_too() -> None:
    from flaskserve import ModelServer, Tensor

    server = ModelServer()

    @server.model("double", inputs=[Tensor("x", "INT32", [-1])],
                  outputs=[Tensor("y", "INT32", [-1])])
    def double(x):
        return x * 2

    @server.app.route("/hello/<who>")
    def hello(who: str) -> str:
        """Say hello to someone."""
        return f"hello {who}"

    document = server.app.test_client().get("/openapi.json").get_json()
    validate(document)
    assert document["paths"]["/hello/{who}"]["get"]["summary"] == "Say hello to someone."
    (_, _, _, _, value), = [e for e in examples(document) if e[0] == "/v2/models/double/infer"]
    response = server.app.test_client().post("/v2/models/double/infer", json=value)
    assert response.status_code == 200, response.get_json()


def response_schema(document: dict, path: str, method: str, status: int) -> dict:
    """The JSON schema the document gives for `status` on `method path`; fails when absent."""
    responses = document["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} does not document {status}"
    return responses[str(status)]["content"]["application/json"]["schema"]


def check_answer(document: dict, path: str, method: str, response) -> None:
    """`response` (a test-client answer to `method path`) fits the schema documented for it."""
    schema = response_schema(document, path, method, response.status_code)
    registry = Registry().with_resource("urn:doc", Resource.opaque(document))
    ref = schema.get("$ref", "").replace("#", "urn:doc#")
    validator = OAS31Validator({"$ref": ref} if ref else schema, registry=registry)
    errors = list(validator.iter_errors(response.get_json()))
    assert not errors, f"{response.status_code} of {path} breaks its schema: {errors[0].message}"


def test_openai_routes_and_browser_refusals_are_documented(document) -> None:
    paths = document["paths"]
    embeddings = paths["/v1/embeddings"]["post"]
    body = embeddings["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/EmbeddingRequest"}
    for status in (400, 401, 403, 404, 413, 415, 421, 429, 503):
        schema = response_schema(document, "/v1/embeddings", "post", status)
        assert schema == {"$ref": "#/components/schemas/OpenAIError"}, status
    listed = response_schema(document, "/v1/models", "get", 200)
    assert listed == {"$ref": "#/components/schemas/ModelList"}
    status_fields = document["components"]["schemas"]["V1ModelStatus"]["properties"]
    assert {"name", "ready", "id", "object", "created", "owned_by"} <= set(status_fields)
    for path, item in paths.items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert {"403", "421"} <= set(responses), f"{method.upper()} {path}"
            if method == "post":
                assert "415" in responses, f"POST {path} does not document 415"


def test_openai_and_browser_guard_answers_fit_their_documented_schemas(app, document) -> None:
    client = app.test_client()
    for encoding in ("float", "base64"):
        request = {"model": "letters", "input": ["abc", "zz"], "encoding_format": encoding}
        answered = client.post("/v1/embeddings", json=request)
        assert answered.status_code == 200, answered.get_json()
        check_answer(document, "/v1/embeddings", "post", answered)
    refusals = [
        client.post("/v1/embeddings", json={"model": "nope", "input": "x"}),  # 404
        client.post("/v1/embeddings", json={"model": "digits", "input": "x"}),  # 400
        client.post("/v1/embeddings", data="x", content_type="text/plain"),  # 415
        client.post("/v1/embeddings", json={}, headers={"Origin": "http://evil.example"}),
        client.post("/v1/embeddings", json={}, base_url="http://evil.example"),  # 421
    ]
    assert [r.status_code for r in refusals] == [404, 400, 415, 403, 421]
    for refusal in refusals:
        check_answer(document, "/v1/embeddings", "post", refusal)
    check_answer(document, "/v1/models", "get", client.get("/v1/models"))
    check_answer(document, "/v1/models/{name}", "get", client.get("/v1/models/digits"))
    for refusal in (
        client.post("/v2/models/digits/infer", data={"a": "1"}),  # 415 (a form)
        client.post("/v2/models/digits/infer", json={}, headers={"Origin": "null"}),  # 403
        client.post("/v2/models/digits/infer", json={}, base_url="http://evil.example"),  # 421
    ):
        assert refusal.status_code in (415, 403, 421)
        check_answer(document, "/v2/models/digits/infer", "post", refusal)
    check_answer(
        document, "/v2", "get", client.get("/v2", headers={"Origin": "http://evil.example"})
    )
