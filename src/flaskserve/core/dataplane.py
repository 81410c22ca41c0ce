"""The protocol-neutral data plane: every front door (V2, V1, SageMaker) ends up here.

Routes decode their wire format into arrays and call `infer`; this module finds the model, checks
the request against its signature, runs it and conforms the outputs. A failure inside a model is
logged with its traceback here and reaches the client as one sentence.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from flaskserve import __version__
from flaskserve.core.errors import FlaskServeError, InferenceFailed
from flaskserve.core.model import Arrays, Model
from flaskserve.core.repository import ModelEntry, ModelRepository
from flaskserve.core.signature import check_inputs, check_output_names, conform_outputs

log = logging.getLogger("flaskserve.dataplane")

SERVER_NAME = "flaskserve"
EXTENSIONS = ["model_repository"]


class DataPlane:
    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    def infer(
        self,
        name: str,
        version: str | None,
        inputs: Mapping[str, np.ndarray],
        datatypes: Mapping[str, str],
        outputs: Sequence[str] | None = None,
    ) -> tuple[Model, Arrays]:
        """Run `inputs` through the model; `outputs` (names the client asked for) are checked
        before any compute is spent."""
        model = self.repository.get(name, version)
        check_inputs(model, inputs, datatypes)
        if outputs:
            check_output_names(model, outputs)
        try:
            raw = model.predict(dict(inputs))
            return model, conform_outputs(model, raw)
        except FlaskServeError:
            raise
        except Exception as exc:
            log.exception("model %s version %s failed to predict", model.name, model.version)
            raise InferenceFailed(
                f"model {model.name!r} failed to predict: {type(exc).__name__}: {exc}"
            ) from None

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """V2 model metadata; for a model that is not ready, its state and the reason why."""
        entry = self.repository.entry(name)
        served = [s.version for s in entry.version_status()]
        if version is not None or entry.default is not None:
            model = self.repository.get(name, version)
            return {
                "name": name,
                "versions": served,
                "platform": model.platform,
                "inputs": [spec.as_metadata() for spec in model.inputs],
                "outputs": [spec.as_metadata() for spec in model.outputs],
            }
        return _unavailable_metadata(entry, served)


def _unavailable_metadata(entry: ModelEntry, served: list[str]) -> dict[str, Any]:
    config = entry.config
    return {
        "name": entry.name,
        "versions": served,
        "platform": (config.runtime if config and config.runtime else "") or "",
        "inputs": [spec.as_metadata() for spec in (config.inputs if config else ())],
        "outputs": [spec.as_metadata() for spec in (config.outputs if config else ())],
        "state": entry.state,
        "reason": entry.reason,
    }
