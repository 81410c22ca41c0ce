"""OpenAI chat and completions on a real server, through the official `openai` client and raw
server-sent events: whole and streamed answers, usage, errors in OpenAI's shape, tokens sent as
they are made, and a client that leaves mid-stream."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import openai
import orjson
import pytest
import requests
from completions import raw_completion, receive_ticks

from servers import Server
from waiting import eventually


@pytest.fixture(scope="module")
def server(gen_repo: Path) -> Iterator[Server]:
    served = Server([str(gen_repo), "--workers", "1"], timeout=120)
    yield served
    served.stop()


@pytest.fixture
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


pytestmark = pytest.mark.e2e


def test_chat_completion_answers_with_text_usage_and_finish_reason(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=6
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    assert 0 < reply.usage.completion_tokens <= 6
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_a_streamed_completion_matches_the_whole_one_and_reports_usage(
    client: openai.OpenAI,
) -> None:
    asked = {"model": "tiny", "prompt": "The quick brown", "max_tokens": 12, "temperature": 0}
    whole = client.completions.create(**asked)
    chunks = list(
        client.completions.create(**asked, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == whole.choices[0].finish_reason and not any(reasons[:-1])
    assert chunks[-1].usage is not None and not chunks[-1].choices
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_a_streamed_chat_sends_role_then_deltas(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gated", messages=[{"role": "user", "content": "/"}], stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "first second"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_v1_models_lists_the_generative_models(client: openai.OpenAI) -> None:
    assert {"tiny", "gated", "endless"} <= {m.id for m in client.models.list()}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "stop": [1]}, "stop"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        ({"messages": []}, "messages"),
        ({"messages": [{"content": "x"}]}, "messages"),
    ],
)
def test_bad_chat_requests_get_openai_errors_naming_the_field(
    client: openai.OpenAI, body: dict, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="tiny", **body)
    assert raised.value.param == param
    assert raised.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def test_unknown_model_and_bodies_that_are_not_json(server: Server, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    answer = requests.post(server.url + "/v1/completions", data=b"{not json", timeout=10)
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"


def test_a_prompt_too_long_is_refused_before_the_stream(server: Server) -> None:
    answer = requests.post(
        server.url + "/v1/completions",
        json={"model": "tiny", "prompt": "fox jumps " * 400, "stream": True},
        timeout=30,
    )
    assert answer.status_code == 400 and "context" in answer.json()["error"]["message"]


def test_each_token_reaches_the_client_when_it_is_made(server: Server, tmp_path: Path) -> None:
    gate = tmp_path / "open"
    with requests.post(
        server.url + "/v1/completions",
        json={"model": "gated", "prompt": str(gate), "stream": True},
        stream=True,
        timeout=60,
    ) as answer:
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        events = answer.iter_lines()
        first = _next_data(events)
        # "second" does not exist yet: the model waits for the gate file.
        assert first["choices"][0]["text"] == "first "
        gate.write_text("open")
        rest = [line for line in events if line]
    assert b'"second"' in rest[0] and rest[-1] == b"data: [DONE]"


def test_a_client_that_leaves_mid_stream_stops_its_generation(
    server: Server, tmp_path: Path
) -> None:
    marker = tmp_path / "closed"
    body = {"model": "endless", "prompt": str(marker), "stream": True}
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(raw_completion(body))
        receive_ticks(sock, 3)
    eventually(marker.exists, timeout=30, message="the endless generation was closed")


def test_a_transformers_stream_left_early_frees_the_server(server: Server) -> None:
    for _ in range(3):
        with requests.post(
            server.url + "/v1/completions",
            json={"model": "tiny", "prompt": "fox", "stream": True, "max_tokens": 48},
            stream=True,
            timeout=60,
        ) as answer:
            _next_data(answer.iter_lines())
    whole = requests.post(
        server.url + "/v1/completions",
        json={"model": "tiny", "prompt": "fox", "max_tokens": 4},
        timeout=60,
    )
    assert whole.status_code == 200 and whole.json()["usage"]["completion_tokens"] >= 1


def _next_data(lines: Iterator[bytes]) -> dict:
    for line in lines:
        if line.startswith(b"data: "):
            return orjson.loads(line[6:])
    raise AssertionError("the stream ended without data")


def test_a_client_that_reads_nothing_does_not_block_other_streams(
    server: Server, tmp_path: Path
) -> None:
    marker = tmp_path / "closed"
    body = {"model": "flood", "prompt": str(marker), "stream": True}
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(raw_completion(body))
        assert b"HTTP/1.1 200" in stalled.recv(64)  # the flood started; nothing more is read
        for _ in range(3):
            other = requests.post(
                server.url + "/v1/completions",
                json={"model": "gated", "prompt": "/", "stream": True},
                timeout=30,
            )
            assert other.status_code == 200 and other.content.endswith(b"data: [DONE]\n\n")
    eventually(marker.exists, timeout=60, message="the stalled stream was closed")
