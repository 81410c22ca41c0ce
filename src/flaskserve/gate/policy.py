"""Which routes need which key, and reading the key a request presents.

Each route declares what it needs where it is defined (`protocol.route_policy`: `open_route`,
`model_route`, `admin_route`, `inference_route`); this module reads those declarations. With
`--auth keys.toml` every route needs a valid key except these, which stay open:

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
exception, declared on the route.
"""

from __future__ import annotations

from flask import Flask, Request

from flaskserve.gate.keys import ApiKey
from flaskserve.protocol import openai
from flaskserve.protocol.route_policy import (
    ADMIN,
    KEY,
    MODEL,
    OPEN,
    Access,
    RoutePolicy,
    policy_of,
)
from flaskserve.protocol.sagemaker import TARGET_MODEL_HEADER

__all__ = [
    "ADMIN",
    "KEY",
    "MODEL",
    "OPEN",
    "access_of",
    "key_from",
    "not_allowed",
    "presented_key",
    "requested_model",
]


def access_of(app: Flask, endpoint: str) -> Access:
    """What `endpoint` of `app` needs, as its route declared it (`protocol.route_policy`):
    OPEN, ADMIN, MODEL (a key allowed on the model) or KEY (any valid key, the default)."""
    declared = policy_of(app, endpoint)
    return declared.access if declared is not None else KEY


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


def requested_model(request: Request, served: list[str], declared: RoutePolicy) -> str | None:
    """The model a model route (`declared`) is about: from the URL, from the JSON body's `model`
    for OpenAI's routes, or for SageMaker's `/invocations` from its target-model header, else
    the only model served (None when that is ambiguous)."""
    name = (request.view_args or {}).get("name")
    if name is not None:
        return str(name)
    if declared.model_in == "body":
        return openai.requested_model(request)
    if declared.model_in == "target":
        named = request.headers.get(TARGET_MODEL_HEADER)
        if named:
            return named
        return served[0] if len(served) == 1 else None
    return None
