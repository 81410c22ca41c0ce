"""The OpenAPI entries of the text generation routes (protocol/openai_generate.py): OpenAI's chat
and completions, whole or streamed as server-sent events."""

from __future__ import annotations

from typing import Any

from flaskserve.web.openapi.responses import (
    ERROR,
    ERRORS,
    OPENAI_ERROR,
    OPENAI_ERRORS,
    answer,
    browser_errors,
    json_content,
    operation,
    ref,
)

_SAMPLING: dict[str, Any] = {
    "model": {
        "type": "string",
        "minLength": 1,
        "description": "A generative model (GET /v1/models lists the served models).",
    },
    "max_tokens": {
        "type": "integer",
        "minimum": 1,
        "description": "At most this many tokens, capped by the model's `max_tokens`.",
    },
    "max_completion_tokens": {"type": "integer", "minimum": 1, "description": "Same."},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2, "default": 1},
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 1},
    "seed": {"type": "integer", "description": "The same seed gives the same text."},
    "stop": {
        "description": "End the text before the first of these strings.",
        "oneOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "maxItems": 4, "items": {"type": "string", "minLength": 1}},
        ],
    },
    "n": {"const": 1},
    "stream": {
        "type": "boolean",
        "default": False,
        "description": "Server-sent events: one `data: {chunk}` per piece of text as it is "
        "made, then `data: [DONE]`.",
    },
    "stream_options": {
        "type": "object",
        "properties": {
            "include_usage": {
                "type": "boolean",
                "description": "A last chunk with empty `choices` carries the usage.",
            }
        },
    },
}

GENERATION_SCHEMAS: dict[str, Any] = {
    "ChatCompletionRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            **_SAMPLING,
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["role"],
                    "properties": {
                        "role": {"type": "string"},
                        "content": {
                            "oneOf": [
                                {"type": "string"},
                                {"type": "array", "items": {"type": "object"}},
                            ],
                            "description": "Text, or a list of text parts.",
                        },
                    },
                },
            },
        },
    },
    "CompletionRequest": {
        "type": "object",
        "required": ["model", "prompt"],
        "properties": {
            **_SAMPLING,
            "prompt": {
                "description": "Text (one prompt per request).",
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "minItems": 1, "maxItems": 1, "items": {"type": "string"}},
                ],
            },
        },
    },
    "CompletionUsage": {
        "type": "object",
        "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
        "properties": {
            "prompt_tokens": {"type": "integer", "minimum": 0},
            "completion_tokens": {"type": "integer", "minimum": 0},
            "total_tokens": {"type": "integer", "minimum": 0},
        },
    },
    "Completion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {
                "enum": ["chat.completion", "text_completion", "chat.completion.chunk"]
            },
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer"},
                        "message": {"type": "object"},
                        "delta": {"type": "object"},
                        "text": {"type": "string"},
                        "finish_reason": {"enum": ["stop", "length", None]},
                    },
                },
            },
            "usage": {"oneOf": [ref("CompletionUsage"), {"type": "null"}]},
        },
    },
}

_STREAM = {
    "description": "The answer (JSON), or with `stream: true` server-sent events of "
    "`Completion` chunks ending with `data: [DONE]`.",
    "content": {
        **json_content(ref("Completion")),
        "text/event-stream": {"schema": {"type": "string"}},
    },
}


def _generate(summary: str, request: str) -> dict[str, Any]:
    return operation(
        "OpenAI",
        summary,
        {
            "200": _STREAM,
            **browser_errors(OPENAI_ERROR, checks_body=True),
            **OPENAI_ERRORS,
            "503": answer("Overloaded: refused before the stream starts.", OPENAI_ERROR),
        },
        requestBody={"required": True, "content": json_content(ref(request))},
    )


GENERATION_SCHEMAS["GenerateRequest"] = {
    "type": "object",
    "required": ["text_input"],
    "properties": {
        "text_input": {"type": "string", "description": "The prompt."},
        "parameters": {
            "type": "object",
            "description": "max_tokens, temperature, top_p, seed, stop (also accepted beside "
            "text_input).",
        },
    },
}
GENERATION_SCHEMAS["GenerateResponse"] = {
    "type": "object",
    "required": ["model_name", "model_version", "text_output"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "text_output": {"type": "string"},
        "finish_reason": {"enum": ["stop", "length"], "description": "On the last answer."},
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
    },
}


def _v2_generate(summary: str, streamed: bool) -> dict[str, Any]:
    media = (
        {"text/event-stream": {"schema": {"type": "string"}}}
        if streamed
        else json_content(ref("GenerateResponse"))
    )
    return operation(
        "V2",
        summary,
        {
            "200": {"description": "Generated text.", "content": media},
            **browser_errors(ERROR, checks_body=True),
            **ERRORS,
        },
        requestBody={"required": True, "content": json_content(ref("GenerateRequest"))},
    )


GENERATION_OPERATIONS: dict[str, dict[str, Any]] = {
    "v2_generate.generate": _v2_generate(
        "Generate text (KServe/Triton generate extension)", streamed=False
    ),
    "v2_generate.generate_stream": _v2_generate(
        "Stream generated text as server-sent events (generate extension)", streamed=True
    ),
    "openai_generate.chat_completions": _generate(
        "Continue a chat with a generative model (OpenAI's chat completions API)",
        "ChatCompletionRequest",
    ),
    "openai_generate.completions": _generate(
        "Continue a prompt with a generative model (OpenAI's completions API)",
        "CompletionRequest",
    ),
}
