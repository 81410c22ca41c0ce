"""What the core reports as it runs models, for whoever measures it (Prometheus, a test, nothing).

The core sits below observability: it may not import the metrics it feeds. So it defines the
events it emits as small protocols, and the layer that owns the metrics implements them
(`flaskserve.observability.metrics.PrometheusObserver`). `create_app` installs that
implementation as the process default; a `Batcher` or loader given no observer reports to that
default, which does nothing until one is installed (a notebook or a test pays nothing).
"""

from __future__ import annotations

from typing import Protocol


class BatchObserver(Protocol):
    """Events of the dynamic batcher and of every predict call."""

    def predicted(self, model: str, version: str, rows: int, seconds: float) -> None:
        """One `predict` ran on `rows` rows (-1: no batch dimension) in `seconds`."""

    def queue_waited(self, model: str, version: str, seconds: float) -> None:
        """A request waited `seconds` for its batch to start (0 when it ran at once)."""

    def queue_changed(self, model: str, version: str, delta: int) -> None:
        """`delta` requests joined (positive) or left (negative) the batcher's queue."""


class LoadObserver(Protocol):
    """Events of the model repository's loader."""

    def loaded(self, model: str, version: str, seconds: float) -> None:
        """One model version loaded in `seconds`."""


class GenerationObserver(Protocol):
    """Events of generative models (`core.generation`)."""

    def generated(
        self,
        model: str,
        version: str,
        first_token: float | None,
        per_token: float | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        """One generation ended (finished or closed): seconds from the request's arrival to its
        first token (None: it made none), mean seconds per output token after the first (None:
        fewer than two), and its token counts."""


class Observer(BatchObserver, LoadObserver, GenerationObserver, Protocol):
    """Both: what one metrics backend implements."""


class NoObserver:
    """Records nothing: the default until a metrics backend is installed."""

    def predicted(self, model: str, version: str, rows: int, seconds: float) -> None:
        pass

    def queue_waited(self, model: str, version: str, seconds: float) -> None:
        pass

    def queue_changed(self, model: str, version: str, delta: int) -> None:
        pass

    def loaded(self, model: str, version: str, seconds: float) -> None:
        pass

    def generated(
        self,
        model: str,
        version: str,
        first_token: float | None,
        per_token: float | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        pass


_default: Observer = NoObserver()


def install(observer: Observer) -> None:
    """Make `observer` the process default. Metrics backends are process-wide (Prometheus keeps
    one registry per process), so one default per process is what they need."""
    global _default
    _default = observer


def current() -> Observer:
    """The process default observer."""
    return _default
