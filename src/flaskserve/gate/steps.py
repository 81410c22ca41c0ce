"""What the service layer gives the data plane: its request limits, and the steps it runs
around every inference (the deadline, usage).

`DataPlane` applies them whichever protocol brought the request (HTTP or gRPC), so each limit has
one implementation. The row and element limits are checked on what a request declares, before
its payload is decoded (`core.declared`); `request_limits(settings)` sets them. `steps(settings)`
is the list `create_app` builds the data plane with; its order is the order they run in.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from flaskserve.core import deadlines
from flaskserve.core.context import BaseStep, InferenceContext, Step
from flaskserve.core.declared import RequestLimits
from flaskserve.core.model import Model
from flaskserve.gate.limits import batch_rows
from flaskserve.settings import Settings


def request_limits(settings: Settings) -> RequestLimits:
    """`--max-batch-rows` rows per request (a model's `max_request_rows` replaces it), and no
    more elements per input than `--max-request-bytes` has bytes."""
    return RequestLimits(settings.max_batch_rows, settings.max_request_bytes)


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
    if settings.request_timeout_ms:
        chosen.append(Deadline(settings.request_timeout_ms / 1000.0))
    chosen.append(Usage())
    return chosen
