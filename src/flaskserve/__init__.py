"""flaskserve: a trained model as a fast, safe HTTP API, and a real Flask app underneath."""

from __future__ import annotations

__version__ = "0.1.0"  # the one place the version is written; pyproject.toml reads it

from flaskserve.app import create_app
from flaskserve.core.model import Model, Tensor, TensorSpec
from flaskserve.server import ModelServer
from flaskserve.settings import Settings

__all__ = ["Model", "ModelServer", "Settings", "Tensor", "TensorSpec", "__version__", "create_app"]
