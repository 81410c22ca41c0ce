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
    """The model itself raised while predicting; the cause is summarised, never traced back."""

    status_code = 500


class ModelLoadError(Exception):
    """A model could not be turned from files into a `Model`; the message becomes its reason."""
