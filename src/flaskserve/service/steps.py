"""The data plane steps of the service layer: the batch-row limit, the deadline, usage.

`DataPlane` runs them around every inference, whichever protocol brought it (HTTP or gRPC), so
each limit has one implementation. `steps(settings)` is the list `create_app` builds the data
plane with; its order is the order they run in.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from flaskserve.core import deadlines
from flaskserve.core.context import BaseStep, InferenceContext, Step
from flaskserve.core.model import Model
from flaskserve.service.limits import batch_rows, check_batch_rows
from flaskserve.settings import Settings


class BatchRowLimit(BaseStep):
    """400 for a request with more rows than `--max-batch-rows`, before any work."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def before(
        self, context: InferenceContext, name: str, inputs: Mapping[str, np.ndarray]
    ) -> None:
        check_batch_rows(name, inputs, self.limit)


class Deadline(BaseStep):
    """`--request-timeout-ms` counted from the request's arrival (time queued for a worker
    thread included); the client's own deadline (gRPC) stands when it is sooner. A request
    whose time ran out before the data plane saw it gets 504 at once."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def before(
        self, context: InferenceContext, name: str, inputs: Mapping[str, np.ndarray]
    ) -> None:
        ours = context.arrived + self.timeout
        if ours <= time.monotonic():
            raise deadlines.expired("waiting for a worker thread")
        if context.deadline is None or ours < context.deadline:
            context.deadline = ours


class Usage(BaseStep):
    """Leaves what the request used in its context, where metering and metrics read it once
    the response is sent: the model that answered, its rows, the seconds it took."""

    def after(
        self,
        context: InferenceContext,
        model: Model | None,
        inputs: Mapping[str, np.ndarray],
        seconds: float,
    ) -> None:
        context.served = model
        context.rows = batch_rows(inputs) if model is not None else 0
        context.compute = seconds


def steps(settings: Settings) -> list[Step]:
    """The steps `settings` ask for, in the order they run: refusals first, then usage."""
    chosen: list[Step] = []
    if settings.max_batch_rows:
        chosen.append(BatchRowLimit(settings.max_batch_rows))
    if settings.request_timeout_ms:
        chosen.append(Deadline(settings.request_timeout_ms / 1000.0))
    chosen.append(Usage())
    return chosen
