"""`ModelServer`: models written as plain Python functions, served by a real Flask app.

    server = flaskserve.ModelServer()

    @server.model("echo", inputs=[Tensor("x", "FP32", [-1, 4])],
                  outputs=[Tensor("y", "FP32", [-1, 4])])
    def echo(x):
        return {"y": x * 2}

    app = server.app          # a Flask app: add your own @app.route as usual

As with `flaskserve serve`, `POST /v2/repository/models/<m>/load|unload` answer 403 unless the
settings allow it: `ModelServer(settings=Settings(model_control=True))`, or API keys (`auth`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from flask import Flask

from flaskserve.app import create_app, model_loader
from flaskserve.core.model import TensorSpec
from flaskserve.core.repository import ModelRepository
from flaskserve.runtimes.python import model_from_callable
from flaskserve.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


class ModelServer:
    """Decorated Python models, plus the models of a repository folder when one is given."""

    def __init__(self, repository: str | Path | None = None, settings: Settings | None = None):
        settings = settings or Settings.from_env()
        if repository is not None:
            settings = settings.with_overrides(repository=str(repository))
        self.settings = settings
        root = Path(settings.repository) if settings.repository else None
        self.repository = ModelRepository(root, model_loader(settings))
        if root is not None:
            self.repository.load_all()
        self._app: Flask | None = None

    def model(
        self,
        name: str,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        version: str = "1",
        max_batch_size: int = 0,
        max_delay_ms: float = 0.0,
    ) -> Callable[[F], F]:
        """Register the decorated function as model `name`; it is called with one keyword
        argument per input (and the request's `parameters`, if it declares that keyword) and
        returns a dict of outputs (or one array for one output).
        `max_batch_size` and `max_delay_ms` batch its requests as `[batching]` in a
        `model.toml` does (docs/runtimes.md)."""

        def register(fn: F) -> F:
            self.repository.register(
                lambda: model_from_callable(
                    name, fn, inputs, outputs, version, max_batch_size, max_delay_ms
                )
            )
            return fn

        return register

    @property
    def app(self) -> Flask:
        if self._app is None:
            self._app = create_app(self.settings, self.repository)
        return self._app
