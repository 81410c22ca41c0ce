"""The `InferenceContext` of the HTTP request being handled, kept in its WSGI environ.

The first hook that needs it (the request-id hook, then the service gate) makes it; the route
hands it to `DataPlane.infer`; after the response the metering hook reads the usage the data
plane's steps left in it. Routes pass it explicitly, so nothing inside the data plane reads
Flask's request.
"""

from __future__ import annotations

from flask import request

from flaskserve.core.context import InferenceContext

#: WSGI environ keys: the context, and the request id (which the access loggers read).
CONTEXT_KEY = "flaskserve.context"
REQUEST_ID_KEY = "flaskserve.request_id"

#: Flask endpoint -> the protocol label of the inference routes.
PROTOCOL_OF_ENDPOINT = {
    "v2.infer": "v2",
    "v1.predict": "v1",
    "sagemaker.invocations": "sagemaker",
    "openai.embeddings": "openai",
    "openai_generate.chat_completions": "openai",
    "openai_generate.completions": "openai",
    "v2_generate.generate": "v2",
    "v2_generate.generate_stream": "v2",
}


def http_context() -> InferenceContext:
    """The current request's context, made on first use."""
    environ = request.environ
    context: InferenceContext | None = environ.get(CONTEXT_KEY)
    if context is None:
        context = environ[CONTEXT_KEY] = InferenceContext(
            PROTOCOL_OF_ENDPOINT.get(request.endpoint or "", "http"),
            environ.get(REQUEST_ID_KEY) or "-",
        )
    return context
