"""Which routes need which key, and reading the key a request presents.

With `--auth keys.toml` every route needs a valid key except these, which stay open:

- health and readiness, for load balancers and Kubernetes probes: `/v2/health/live`,
  `/v2/health/ready`, `/v2/models/<m>[/versions/<v>]/ready`, `/v1/models/<m>`, `/ping`;
- `GET /v2` (server name, version and extensions: what a client library probes first);
- the human front doors, like a public API reference: the playground (`/`, `/models/<m>`,
  `/assets/...`), `/docs`, `/openapi.json`, `/home/<name>` and the dashboard page `/dashboard`
  (its data, `/dashboard/data`, needs a key: admin keys see everything, others their own
  usage and their models only; see `gate.dashboard_data`). They show which models exist and
  their signatures, no data and no usage; the playground's calls to a model need a key like any
  other call. Where model names themselves are confidential, keep these pages off the public
  listener (a reverse proxy rule), since a browser cannot send a bearer key on navigation.

Model routes (inference on every protocol, model metadata, and a model's statistics) need a key
allowed on that model (403 otherwise); a model's statistics count every client's requests to it,
not only the key's. OpenAI's `POST /v1/embeddings` names its model in the JSON body (`model`),
parsed once per request, and only once the key is valid (the request metrics read the model
from that parse, never the body itself). `GET /v1/models` needs a valid key. The repository
routes (index, load, unload), the statistics of all models (`/v2/models/stats`), `/v2/usage`
and `/metrics` (whose per-key series say what every customer used) need an admin key. Any other
route, including routes an application adds to the app, needs a valid key: open is the
exception, listed here.
"""

from __future__ import annotations

from flask import Request

from flaskserve.gate.keys import ApiKey
from flaskserve.protocol import openai
from flaskserve.protocol.sagemaker import TARGET_MODEL_HEADER

OPEN = "open"
ADMIN = "admin"
MODEL = "model"
KEY = "key"

OPEN_ENDPOINTS = frozenset(
    {
        "v2.live",
        "v2.ready",
        "v2.server_metadata",
        "v2.model_ready",
        "v1.model_status",
        "sagemaker.ping",
        "home.index",
        "home.model_page",
        "home.static",
        "home.greet",
        "home.dashboard",
        "static",
    }
)
OPEN_PATHS = frozenset({"/", "/docs", "/openapi.json"})
OPEN_PREFIXES = ("/static/", "/assets/", "/docs/")
#: The routes that run a model; these are metered, rate limited and shed under overload.
#: OpenAI's text generation routes (protocol/openai_generate.py).
GENERATE_BODY_ENDPOINTS = frozenset(
    {"openai_generate.chat_completions", "openai_generate.completions"}
)
INFERENCE_ENDPOINTS = (
    frozenset({"v2.infer", "v1.predict", "sagemaker.invocations", "openai.embeddings"})
    | GENERATE_BODY_ENDPOINTS
    | {"v2_generate.generate", "v2_generate.generate_stream"}
)
#: Every route that runs a generation (token quotas apply to these).
GENERATE_ENDPOINTS = GENERATE_BODY_ENDPOINTS | {
    "v2_generate.generate",
    "v2_generate.generate_stream",
}
#: Inference routes that name their model in the JSON body's `model` field, as OpenAI's do.
BODY_MODEL_ENDPOINTS = frozenset({"openai.embeddings"}) | GENERATE_BODY_ENDPOINTS
MODEL_ENDPOINTS = INFERENCE_ENDPOINTS | {"v2.model_metadata", "v2.model_statistics"}
ADMIN_ENDPOINTS = frozenset(
    {
        "v2.repository_index",
        "v2.load_model",
        "v2.unload_model",
        "v2.all_model_statistics",
        "gate.usage",
    }
)
ADMIN_PATHS = frozenset({"/metrics"})


def access_of(endpoint: str, path: str) -> str:
    """OPEN, ADMIN, MODEL (a key allowed on the model) or KEY (any valid key)."""
    if endpoint in MODEL_ENDPOINTS:
        return MODEL
    if endpoint in OPEN_ENDPOINTS or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return OPEN
    if endpoint in ADMIN_ENDPOINTS or path in ADMIN_PATHS:
        return ADMIN
    return KEY


def presented_key(request: Request) -> str | None:
    """The key from `Authorization: Bearer <key>`, else from `X-API-Key`; None if neither."""
    return key_from(request.headers.get("Authorization"), request.headers.get("X-API-Key"))


def key_from(authorization: str | None, api_key: str | None) -> str | None:
    """The key a client presents, whatever carries the two values (HTTP headers, gRPC
    metadata): a `Bearer` authorization first, else the API-key value."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return api_key.strip() if api_key and api_key.strip() else None


def not_allowed(key: ApiKey, model: str | None) -> str:
    """Why `key` may not use `model`, naming the models it may use."""
    return f"API key {key.id!r} may not use model {model!r}; it may use: {', '.join(key.models)}"


def requested_model(request: Request, served: list[str]) -> str | None:
    """The model a model route is about: from the URL, from the JSON body's `model` for OpenAI's
    routes, or for SageMaker's `/invocations` from its target-model header, else the only model
    served (None when that is ambiguous)."""
    name = (request.view_args or {}).get("name")
    if name is not None:
        return str(name)
    if request.endpoint in BODY_MODEL_ENDPOINTS:
        return openai.requested_model(request)
    if request.endpoint == "sagemaker.invocations":
        named = request.headers.get(TARGET_MODEL_HEADER)
        if named:
            return named
        return served[0] if len(served) == 1 else None
    return None
