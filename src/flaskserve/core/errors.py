"""One exception family for everything a client can get wrong or wait for.

Each error carries the HTTP status it maps to, and the headers that go with it (`Retry-After`,
`WWW-Authenticate`), so one handler renders every failure the same way (`{"error": "..."}`)
without knowing where it was raised, and gRPC maps the same status to its code. Messages are
written for the person sending the request: they say what to change, never how the server
failed inside.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

_NO_HEADERS: Mapping[str, str] = {}


class FlaskServeError(Exception):
    """Base of every error that reaches a client; `status_code` is its HTTP status and
    `headers` the response headers it needs."""

    status_code = 500

    def __init__(self, message: str, headers: Mapping[str, str] = _NO_HEADERS) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers

    def __str__(self) -> str:
        return self.message

    def client_message(self, request_id: str) -> str:
        """What the client is told; `request_id` lets an error point at the server's log."""
        return self.message


class InvalidInput(FlaskServeError):
    """The request is malformed or does not fit the model's signature."""

    status_code = 400


class RequestTooLarge(InvalidInput):
    """The request declares more rows or elements than one request may carry; the message says
    the limit, what was sent and how to raise it. A 400, as OpenAI answers more inputs than it
    takes and Triton a batch over its limit (gRPC: INVALID_ARGUMENT)."""


class NotFound(FlaskServeError):
    """The thing asked for does not exist here (or is switched off)."""

    status_code = 404


class ModelNotFound(NotFound):
    """No model (or no such version of it) is known to the repository."""


class Unauthorized(FlaskServeError):
    """No API key, or one the server does not know; `challenge` is the `WWW-Authenticate`
    value telling an HTTP client how to authenticate."""

    status_code = 401

    def __init__(self, message: str, challenge: str = 'Bearer realm="flaskserve"') -> None:
        super().__init__(message, {"WWW-Authenticate": challenge})


class Forbidden(FlaskServeError):
    """A valid key that may not do this (another model, or a route for admin keys)."""

    status_code = 403


class RateLimited(FlaskServeError):
    """The key sent more than its rate allows; it may retry after `retry_after` seconds."""

    status_code = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, {"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class Overloaded(FlaskServeError):
    """The server is shedding load; the client may retry after `retry_after` seconds."""

    status_code = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, {"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class ModelNotReady(FlaskServeError):
    """The model exists but cannot serve now (failed to load, or unloaded)."""

    status_code = 503


class InferenceFailed(FlaskServeError):
    """The model broke its contract (an output missing or of the wrong kind) or raised."""

    status_code = 500


class ModelFailed(InferenceFailed):
    """A model's own code raised while predicting.

    The client hears the exception's type, never its text: that text may quote file paths,
    inputs or credentials. The web layer logs `cause` (text and traceback) with the request id
    and hands the client that id (`client_message`), so the two can be matched in the log.
    """

    def __init__(self, model: str, version: str, cause: BaseException) -> None:
        self.model = model
        self.version = version
        self.cause = cause
        self.kind = type(cause).__name__
        super().__init__(f"model {model!r} failed ({self.kind})")

    def client_message(self, request_id: str) -> str:
        return f"{self.message}; request id {request_id}, see the server log"

    def log_to(self, log: logging.Logger, request_id: str) -> None:
        """The exception's text and traceback, on the line that carries the request id."""
        log.error(
            "request %s: model %s version %s failed: %s: %s",
            request_id, self.model, self.version, self.kind, self.cause, exc_info=self.cause,
        )  # fmt: skip


class ModelLoadError(Exception):
    """A model could not be turned from files into a `Model`; the message becomes its reason."""
