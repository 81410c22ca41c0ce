"""Adaptive dynamic batching: many small requests, one `predict` on their concatenation.

One `Batcher` serves one model version whose `max_batch_size` > 0. A request hands it its
(already checked) input arrays; the model runs one predict at a time, on the inputs of the
requests that queued meanwhile concatenated along the first dimension (up to `max_batch_size`
rows, not requests), and each request gets back exactly its own rows of every output.

Batching only pays under load, so it costs light traffic nothing:

- A request that finds the model idle (no predict running, nothing queued) runs `predict` at
  once in its own thread: no hand-off, and no `max_delay_ms` window.
- A request that arrives while a predict runs is queued. When the predict ends, the oldest
  queued request becomes the leader: in its own thread it takes everything that queued
  meanwhile and runs it as one batch, while the others wait for their rows. Batches therefore
  grow with the load (continuous batching), and there is no batcher thread to wake.
- `max_delay_ms` (default 0) lets the leader wait for company: until the queue holds
  `max_batch_size` rows or until the leader has been queued for `max_delay_ms`, whichever
  comes first. The window counts from the leader's arrival, so time spent behind the running
  predict is part of it; a lone request on an idle model never waits. Whether a window pays
  depends on the model: see docs/benchmarks.md.
- A request with more rows than `max_batch_size` runs on its own, at once, beside the batches.
- A model that reads the request's `parameters` (`Model.takes_parameters`) is given the
  parameters of its batch's requests, which share them: requests whose parameters differ are
  never concatenated.

A model whose runtime declares `chunk_rows` (`Model.chunk_rows`: the runtimes that take many
rows set it to `max_batch_size`, or to their own default when batching is off) never runs more
rows than that in one `predict`: a larger request, or one that runs alone, is predicted in
consecutive chunks whose outputs are concatenated in order (`predict_chunked`), so a worker's
peak memory depends on the chunk, not on the request. Between chunks the request's deadline is
checked, so a request that timed out stops spending the CPU.

A batch that fails is retried request by request, so one request the model cannot handle fails
alone with its own error instead of failing the requests that happened to share its batch.
Closing the batcher (the model is unloaded) fails queued requests with `ModelNotReady` and waits
for running predicts to end, so the runtime's own unload never frees a model mid-predict.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from flaskserve.core import deadlines
from flaskserve.core.errors import FlaskServeError, InferenceFailed, ModelFailed, ModelNotReady
from flaskserve.core.model import NO_PARAMETERS, Arrays, Model
from flaskserve.core.observers import BatchObserver, current
from flaskserve.core.signature import conform_outputs

log = logging.getLogger("flaskserve.batching")

#: How long `close` waits for a running batch before giving up on it (seconds).
CLOSE_TIMEOUT = 30.0


def run_model(
    model: Model,
    inputs: Arrays,
    observer: BatchObserver | None = None,
    parameters: Mapping[str, Any] = NO_PARAMETERS,
) -> Arrays:
    """`model.predict` with outputs conformed to the signature; any failure becomes a
    `FlaskServeError` (a model's own exception a `ModelFailed`, whose text is never sent).
    The call is reported to `observer` (default: the process's, `core.observers`)."""
    try:
        rows = _batch_key(inputs)[0]
        return predict_chunked(model, inputs, rows, observer or current(), parameters)
    except Exception as exc:
        raise prediction_error(model, exc) from None


def predict_chunked(
    model: Model,
    inputs: Arrays,
    rows: int,
    observer: BatchObserver,
    parameters: Mapping[str, Any] = NO_PARAMETERS,
) -> Arrays:
    """`model.predict` on `inputs` (`rows` along the first dimension, -1 when the inputs
    disagree on it) and the request's `parameters`, conformed to the signature, in chunks of
    at most `model.chunk_rows` rows; each predict call is reported to `observer`."""
    chunk = model.chunk_rows
    if chunk <= 0 or rows <= chunk:
        return _predict_once(model, inputs, rows, observer, parameters)
    parts = []
    for start in range(0, rows, chunk):
        if start:
            remaining = deadlines.remaining()
            if remaining is not None and remaining <= 0:
                raise deadlines.expired(f"running row {start} of {rows}")
        piece = {name: array[start : start + chunk] for name, array in inputs.items()}
        outputs = _predict_once(model, piece, min(chunk, rows - start), observer, parameters)
        check_rows(model, outputs, min(chunk, rows - start), "chunk_rows")
        parts.append(outputs)
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _predict_once(
    model: Model,
    inputs: Arrays,
    rows: int,
    observer: BatchObserver,
    parameters: Mapping[str, Any],
) -> Arrays:
    started = time.perf_counter()
    outputs = conform_outputs(model, model.predict(inputs, parameters))
    observer.predicted(model.name, model.version, rows, time.perf_counter() - started)
    return outputs


def check_rows(model: Model, outputs: Arrays, rows: int, setting: str) -> None:
    """Every output has `rows` rows, as `setting` (> 0) promises of the model."""
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != rows:
            got = "a scalar" if array.ndim == 0 else f"{array.shape[0]} rows"
            raise InferenceFailed(
                f"model {model.name!r} returned {got} for output {name!r} given {rows} input "
                f"rows; a model with {setting} > 0 must return one row per input row"
            )


def prediction_error(model: Model, exc: BaseException) -> FlaskServeError:
    """The client-facing error for `exc` raised by `model`.

    Nothing is logged here: the request's own thread logs a `ModelFailed` with its request id
    (a batch runs in another request's thread, so only there is the right id known).
    """
    if isinstance(exc, FlaskServeError):
        return exc
    return ModelFailed(model.name, model.version, exc)


class _Pending:
    """One queued request: its inputs, its row count, and a lock released when it is answered.

    A pre-acquired lock is the cheapest one-shot wait CPython offers (an Event is a Condition
    plus a lock).
    """

    __slots__ = (
        "arrived", "done", "error", "inputs", "key", "lead", "outputs", "parameters", "rows",
    )

    def __init__(
        self, inputs: Arrays, rows: int, key: tuple[Any, ...], parameters: Mapping[str, Any]
    ) -> None:
        self.inputs = inputs
        self.parameters = parameters
        self.rows = rows
        self.key = key
        self.arrived = time.monotonic()
        self.outputs: Arrays | None = None
        self.error: FlaskServeError | None = None
        self.lead = False  # chosen to run the next batch in its own thread
        self.done = threading.Lock()
        self.done.acquire()

    def resolve(self, outputs: Arrays | None, error: FlaskServeError | None = None) -> None:
        self.outputs = outputs
        self.error = error
        self.done.release()


class Batcher:
    """Batches the requests of one model version; `submit` is called from request threads.

    There is no batcher thread: a batch runs in the thread of one of its own requests (the
    leader), so a batched request costs one thread wake-up, not two, and an idle model runs a
    request at once in its own thread.
    """

    def __init__(self, model: Model, observer: BatchObserver | None = None) -> None:
        if model.max_batch_size <= 0:
            raise ValueError(f"model {model.name!r} has max_batch_size 0; it does not batch")
        self.model = model
        self.max_rows = model.max_batch_size
        self.max_delay = model.max_delay_ms / 1000.0
        #: Where queue and predict events go (default: the process's, `core.observers`).
        self.observer: BatchObserver = observer or current()
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0  # rows of the queued requests: a full queue ends a leader's wait
        self._gathering = False  # a leader waits out its `max_delay_ms` window
        self._busy = False  # a predict (inline or a batch) is running; one at a time
        self._alone = 0  # oversized requests predicting on their own, beside the batches
        self._closed = False
        self._cond = threading.Condition(threading.Lock())

    def submit(self, inputs: Arrays, parameters: Mapping[str, Any] = NO_PARAMETERS) -> Arrays:
        """Run `inputs` (checked against the signature) as part of a batch whose requests all
        have these `parameters`; returns this request's rows of every output, or raises the
        `FlaskServeError` that failed it."""
        rows, key = _batch_key(inputs)
        if parameters:
            key = (key, _parameters_key(parameters))
        pending = None
        with self._cond:
            if self._closed:
                raise self._unloaded_error()
            if rows < 0 or rows > self.max_rows:
                self._alone += 1
                alone = True
            elif not self._busy and not self._queue:
                self._busy = True
                alone = False
            else:
                pending = _Pending(inputs, rows, key, parameters)
                self._queue.append(pending)
                self._queued_rows += rows
                if self._gathering and self._queued_rows >= self.max_rows:
                    self._cond.notify_all()
        if pending is None:
            self.observer.queue_waited(self.model.name, self.model.version, 0.0)
            try:
                return self._run_alone(inputs, rows, parameters)
            finally:
                if alone:
                    with self._cond:
                        self._alone -= 1
                        self._cond.notify_all()
                else:
                    self._hand_over()
        self.observer.queue_changed(self.model.name, self.model.version, 1)
        remaining = deadlines.remaining()
        if not pending.done.acquire(timeout=-1 if remaining is None else max(remaining, 0.0)):
            self._abandon(pending)
        if pending.lead:
            self._lead(pending)
        if pending.error is not None:
            raise pending.error
        assert pending.outputs is not None
        return pending.outputs

    def _hand_over(self) -> None:
        """The running predict ended: the oldest queued request leads the next batch (it takes
        what queued meanwhile), or the batcher goes idle."""
        with self._cond:
            if self._queue and not self._closed:
                head = self._queue[0]
                head.lead = True
                head.done.release()
            else:
                self._busy = False
                self._cond.notify_all()

    def _lead(self, me: _Pending) -> None:
        """Run the batch headed by `me` in this (its own) thread, then hand over."""
        with self._cond:
            if self.max_delay > 0:
                self._gather(me)
            batch = self._take() if self._queue and self._queue[0] is me else None
        if batch is None:  # closed after `me` was chosen: `_fail_queued` set its error
            self._hand_over()
            return
        self._record_dequeued(batch)
        try:
            self._run_batch(batch)
        except BaseException as exc:  # never leave a request of the batch waiting
            error = prediction_error(self.model, exc)
            for pending in batch:
                if pending.outputs is None and pending.error is None:
                    pending.resolve(None, error)
        finally:
            self._hand_over()

    def _gather(self, me: _Pending) -> None:
        """Hold the batch back (the lock held; waiting releases it, so others can queue) until
        it is full, `me` has been queued `max_delay_ms`, `me`'s deadline nears, or it closes."""
        until = me.arrived + self.max_delay
        remaining = deadlines.remaining()
        if remaining is not None:
            until = min(until, time.monotonic() + remaining)
        self._gathering = True
        try:
            while self._queued_rows < self.max_rows and not self._closed:
                timeout = until - time.monotonic()
                if timeout <= 0:
                    break
                self._cond.wait(timeout)
        finally:
            self._gathering = False

    def _abandon(self, pending: _Pending) -> None:
        """The request's deadline (`core.deadlines`) passed while it waited for its batch: fail
        it with 504 and take it out of the queue, unless a batch holds it already (its rows are
        then computed, never read) or it was just answered or chosen to lead."""
        with self._cond:
            if pending.done.acquire(blocking=False):
                return  # answered, or chosen to lead, just now
            try:
                self._queue.remove(pending)
            except ValueError:
                pass
            else:
                self._queued_rows -= pending.rows
                self.observer.queue_changed(self.model.name, self.model.version, -1)
        raise deadlines.expired("waiting for its batch")

    def _run_alone(self, inputs: Arrays, rows: int, parameters: Mapping[str, Any]) -> Arrays:
        try:
            return self._predict(inputs, rows, parameters)
        except Exception as exc:
            raise prediction_error(self.model, exc) from None

    def _predict(self, inputs: Arrays, rows: int, parameters: Mapping[str, Any]) -> Arrays:
        outputs = predict_chunked(self.model, inputs, rows, self.observer, parameters)
        if rows >= 0:
            check_rows(self.model, outputs, rows, "max_batch_size")
        return outputs

    def _take(self) -> list[_Pending]:
        """The oldest requests that fit in one batch and share their non-batch dimensions."""
        queue = self._queue
        first = queue.popleft()
        batch = [first]
        rows = first.rows
        while queue:
            candidate = queue[0]
            if candidate.key != first.key or rows + candidate.rows > self.max_rows:
                break
            queue.popleft()
            batch.append(candidate)
            rows += candidate.rows
        self._queued_rows -= rows
        return batch

    def _run_batch(self, batch: list[_Pending]) -> None:
        if len(batch) == 1:
            self._run_pending(batch[0])
            return
        try:
            inputs = {
                name: np.concatenate([p.inputs[name] for p in batch]) for name in batch[0].inputs
            }
            outputs = self._predict(inputs, sum(p.rows for p in batch), batch[0].parameters)
        except Exception as exc:
            # Its text is logged by each request that fails again alone, with its request id.
            log.warning(
                "model %s version %s failed on a batch of %d requests (%s); retrying each alone",
                self.model.name, self.model.version, len(batch), type(exc).__name__,
            )
            for pending in batch:
                self._run_pending(pending)
            return
        start = 0
        for pending in batch:
            stop = start + pending.rows
            pending.resolve({name: array[start:stop] for name, array in outputs.items()})
            start = stop

    def _run_pending(self, pending: _Pending) -> None:
        try:
            outputs = self._run_alone(pending.inputs, pending.rows, pending.parameters)
        except FlaskServeError as exc:
            pending.resolve(None, exc)
        else:
            pending.resolve(outputs)

    # -- shutdown ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop taking requests, fail the queued ones, and wait for running predicts to end."""
        deadline = time.monotonic() + CLOSE_TIMEOUT
        with self._cond:
            self._closed = True
            self._fail_queued()
            self._cond.notify_all()  # a leader waiting out its window
            while self._busy or self._alone:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning(
                        "model %s version %s still predicts %.0fs after its unload",
                        self.model.name, self.model.version, CLOSE_TIMEOUT,
                    )
                    break
                self._cond.wait(remaining)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (not counting those being predicted)."""
        return len(self._queue)

    def _record_dequeued(self, batch: list[_Pending]) -> None:
        name, version, observer = self.model.name, self.model.version, self.observer
        observer.queue_changed(name, version, -len(batch))
        now = time.monotonic()
        for pending in batch:
            observer.queue_waited(name, version, now - pending.arrived)

    def _fail_queued(self) -> None:
        """Fail every queued request; one already chosen to lead finds out in `_lead`."""
        error = self._unloaded_error()
        if self._queue:
            self.observer.queue_changed(self.model.name, self.model.version, -len(self._queue))
        while self._queue:
            pending = self._queue.popleft()
            if pending.lead:
                pending.error = error
            else:
                pending.resolve(None, error)
        self._queued_rows = 0

    def _unloaded_error(self) -> ModelNotReady:
        return ModelNotReady(
            f"model {self.model.name!r} version {self.model.version} was unloaded; "
            "retry, or load it again"
        )


def _batch_key(inputs: Arrays) -> tuple[int, tuple[Any, ...]]:
    """Rows along the batch dimension (-1 when the inputs disagree on it or have none), and
    what requests must share to be concatenated: every input's trailing shape and dtype."""
    rows = -2
    key = []
    for name, array in inputs.items():
        shape = array.shape
        if not shape:
            return -1, ()
        if rows == -2:
            rows = shape[0]
        elif shape[0] != rows:
            return -1, ()
        key.append((name, shape[1:], array.dtype))
    return max(rows, -1), tuple(key)


def _parameters_key(parameters: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """What requests must share to be batched for a model that reads their parameters: the
    parameters, each value by its `repr` (JSON values may be lists; `1` and `1.0` differ)."""
    return tuple(sorted((name, repr(value)) for name, value in parameters.items()))
