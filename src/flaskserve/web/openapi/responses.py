"""The OpenAPI building blocks of an operation: references, media types and responses, the error
answers every route shares (V2's `{"error"}` and OpenAI's shape), the refusals of the API key
gate and the browser guards, and the API key security schemes."""

from __future__ import annotations

from typing import Any


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict[str, Any], examples: dict[str, Any] | None = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if examples:
        media["examples"] = {key: {"value": value} for key, value in examples.items()}
    return {"application/json": media}


def answer(
    description: str, schema: dict[str, Any] | None = None, example: Any = None
) -> dict[str, Any]:
    """A response; `example` is a body Swagger UI shows next to the schema."""
    response: dict[str, Any] = {"description": description}
    if schema is not None:
        response["content"] = json_content(schema)
        if example is not None:
            response["content"]["application/json"]["example"] = example
    return response


def text(description: str, media_type: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def operation(tag: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"tags": [tag], "summary": summary, "responses": responses, **extra}


ERROR = ref("Error")
ERRORS = {
    "400": answer(
        "The request is malformed or does not fit the model's signature.",
        ERROR,
        {"error": "input 'input': shape [1, 64] needs 64 values but 'data' has 1"},
    ),
    "404": answer(
        "Unknown model or version.",
        ERROR,
        {"error": "unknown model 'digit'; served models: digits"},
    ),
    "503": answer(
        "The model is not ready (failed to load, or unloaded).",
        ERROR,
        {"error": "model 'digits' is not ready: unloaded"},
    ),
}

#: The API key schemes (`--auth`): Swagger UI's "Authorize" fills either header.
SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key as `Authorization: Bearer <key>` (servers run with --auth; "
        "`flaskserve keys add NAME` makes one).",
    },
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "The same API key in the `X-API-Key` header.",
    },
}
#: What a route that needs a key answers without a valid one.
UNAUTHORIZED = answer(
    "No API key, or an unknown one (with --auth); WWW-Authenticate says which scheme.",
    ERROR,
    {"error": "this server needs an API key: send 'Authorization: Bearer <key>' or "
     "'X-API-Key: <key>'"},
)

OPENAI_ERROR = ref("OpenAIError")
#: The OpenAI routes answer every refusal in OpenAI's error shape, the service gate's included.
OPENAI_ERRORS = {
    "400": answer("The request is malformed; `param` names the field to fix.", OPENAI_ERROR),
    "401": answer("No API key, or an unknown one (with --auth).", OPENAI_ERROR),
    "403": answer(
        "The key may not use this model (with --auth), or the request came from a page on "
        "another origin.",
        OPENAI_ERROR,
    ),
    "404": answer("Unknown model.", OPENAI_ERROR),
    "413": answer("The body is larger than --max-request-bytes.", OPENAI_ERROR),
    "429": answer("The key's rate limit is spent; Retry-After says when to retry.", OPENAI_ERROR),
    "503": answer("The model is not ready, or the server is saturated.", OPENAI_ERROR),
}


def browser_errors(error: dict[str, Any], checks_body: bool) -> dict[str, Any]:
    """The refusals of the browser guards (gate/browser.py), which any route may give: 403
    for a page on a foreign origin, 421 for a Host a loopback-bound server does not answer, and
    on flaskserve's POST routes 415 for the body types a cross-site form can send."""
    responses = {
        "403": answer(
            "The request came from a page on another origin (its Origin header); the operator "
            "can allow that origin with --cors-origins.",
            error,
        ),
        "421": answer(
            "The Host header names none of the names this server answers: a server bound to "
            "loopback answers loopback names only, plus --allowed-hosts.",
            error,
        ),
    }
    if checks_body:
        responses["415"] = answer(
            "The Content-Type is one an HTML form on any site can send (form-urlencoded, "
            "multipart/form-data, text/plain).",
            error,
        )
    return responses
