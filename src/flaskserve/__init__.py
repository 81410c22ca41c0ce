"""flaskserve: a trained model as a fast, safe HTTP API, and a real Flask app underneath."""

from __future__ import annotations

__version__ = "0.1.0"

from flaskserve.app import create_app  # noqa: E402
from flaskserve.core.model import Model, Tensor, TensorSpec  # noqa: E402
from flaskserve.server import ModelServer  # noqa: E402
from flaskserve.settings import Settings  # noqa: E402

__all__ = ["Model", "ModelServer", "Settings", "Tensor", "TensorSpec", "__version__", "create_app"]
