"""What a route needs and what it is, declared once, on the view function, where the route is.

    @bp.post("/models/<name>/infer")
    @inference_route("v2")
    def infer(name: str) -> Response: ...

The gate (`gate.policy`) reads the declaration for the key a request needs, and whether it runs
a model (rate limited, shed under overload, metered) or a generation (the key's token quota);
the request metrics (`observability.requests`) read the protocol label and where the model is
named. Nothing else lists endpoint names.

A view without a declaration needs a valid key (`NEEDS_KEY`): routes an application adds to the
app are safe by default, and open only when declared so (`open_route`). flaskserve's own static
files (the playground's `/assets/`), which a page loads before any key could be sent, are open
(`STATIC`): Flask serves them through a bound method, which cannot carry a declaration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

from flask import Flask

#: The access a route needs (`RoutePolicy.access`).
Access = Literal["open", "key", "model", "admin"]
#: Anyone: health, readiness, the pages.
OPEN: Final = "open"
#: Any valid key (the default).
KEY: Final = "key"
#: A key allowed on the model the request is about.
MODEL: Final = "model"
#: An admin key.
ADMIN: Final = "admin"

#: Where an inference route names its model: the URL's `<name>`, the JSON body's `model`
#: (OpenAI's routes; read only once the key is valid), or SageMaker's target-model header (else
#: the only model served).
ModelIn = Literal["url", "body", "target"]

View = TypeVar("View", bound=Callable[..., Any])
_ATTRIBUTE = "flaskserve_route"


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """A route's declaration."""

    access: Access = KEY
    #: Runs a model: counted and timed in the request metrics under `protocol`, rate limited,
    #: shed under overload and metered.
    inference: bool = False
    #: The protocol label of an inference route (metrics, `InferenceContext.protocol`).
    protocol: str | None = None
    #: Runs a generation: the key's token quota applies.
    generates: bool = False
    model_in: ModelIn = "url"


#: What a view without a declaration needs.
NEEDS_KEY = RoutePolicy(KEY)
#: flaskserve's own static files.
STATIC = RoutePolicy(OPEN)


def declare(policy: RoutePolicy) -> Callable[[View], View]:
    """A decorator that gives a view function `policy` (above or below Flask's route
    decorator: both see the same function)."""

    def tag(view: View) -> View:
        setattr(view, _ATTRIBUTE, policy)
        return view

    return tag


#: No key needed.
open_route = declare(RoutePolicy(OPEN))
#: An admin key needed.
admin_route = declare(RoutePolicy(ADMIN))
#: A key allowed on the model in the URL needed (model metadata and statistics).
model_route = declare(RoutePolicy(MODEL))


def inference_route(
    protocol: str, *, generates: bool = False, model_in: ModelIn = "url"
) -> Callable[[View], View]:
    """A route that runs a model, speaking `protocol`: a key allowed on the model needed."""
    return declare(RoutePolicy(MODEL, True, protocol, generates, model_in))


def policy_of(app: Flask, endpoint: str | None) -> RoutePolicy | None:
    """The declaration of `endpoint`'s view in `app`; None when no route matched (Flask answers
    404 or 405), `NEEDS_KEY` for a view that declared nothing."""
    if endpoint is None:
        return None
    view = app.view_functions.get(endpoint)
    found: RoutePolicy | None = getattr(view, _ATTRIBUTE, None)
    if found is not None:
        return found
    if endpoint == "static" or endpoint.endswith(".static"):
        blueprint = endpoint.rpartition(".")[0]
        owner = app.blueprints.get(blueprint) if blueprint else app
        if owner is not None and _is_flaskserves(owner.import_name):
            return STATIC
    return NEEDS_KEY


def _is_flaskserves(import_name: str) -> bool:
    return import_name == "flaskserve" or import_name.startswith("flaskserve.")
