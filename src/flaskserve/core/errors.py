"""One exception family for everything a client can get wrong or wait for.

Each error carries the HTTP status it maps to, so the protocol layer renders every failure the
same way (`{"error": "..."}`) without knowing where it was raised. Messages are written for the
person sending the request: they say what to change, never how the server failed inside.
"""

from __future__ import annotations


class FlaskServeError(Exception):
    """Base of every error that reaches a client; `status_code` is its HTTP status."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(FlaskServeError):
    """The request is malformed or does not fit the model's signature."""

    status_code = 400


class ModelNotFound(FlaskServeError):
    """No model (or no such version of it) is known to the repository."""

    status_code = 404


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


class ModelLoadError(Exception):
    """A model could not be turned from files into a `Model`; the message becomes its reason."""
