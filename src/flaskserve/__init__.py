"""flaskserve: a trained model as a fast, safe HTTP API, and a real Flask app underneath.

The names below are imported on first use (PEP 562), not here: Python imports this module before
any submodule, so an eager `from flaskserve.app import create_app` would load Flask, Granian and
every front door for a program that only wants `flaskserve.core` or a runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from flaskserve.version import __version__

if TYPE_CHECKING:
    from flaskserve.app import create_app
    from flaskserve.core.model import Model, Tensor, TensorSpec
    from flaskserve.protocol.route_policy import open_route
    from flaskserve.server import ModelServer
    from flaskserve.settings import Settings

#: public name -> the module that defines it
_LAZY = {
    "create_app": "flaskserve.app",
    "Model": "flaskserve.core.model",
    "Tensor": "flaskserve.core.model",
    "TensorSpec": "flaskserve.core.model",
    "ModelServer": "flaskserve.server",
    "Settings": "flaskserve.settings",
    "open_route": "flaskserve.protocol.route_policy",
}

__all__ = [
    "Model",
    "ModelServer",
    "Settings",
    "Tensor",
    "TensorSpec",
    "__version__",
    "create_app",
    "open_route",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flaskserve' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
