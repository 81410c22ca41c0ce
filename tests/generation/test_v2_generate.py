"""KServe/Triton's generate extension on a real server, read as raw HTTP and server-sent events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests

from servers import Server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(gen_repo: Path) -> Iterator[Server]:
    served = Server([str(gen_repo), "--workers", "1"], timeout=120)
    yield served
    served.stop()


def _events(body: bytes) -> list[dict]:
    """The `data:` events of an SSE body, each on its own, separated by a blank line."""
    assert body.endswith(b"\n\n")
    events = []
    for block in body.split(b"\n\n")[:-1]:
        assert block.startswith(b"data: "), block
        events.append(orjson.loads(block[len(b"data: ") :]))
    return events


def test_generate_answers_one_object_with_the_whole_text(server: Server) -> None:
    answer = requests.post(
        server.url + "/v2/models/tiny/generate",
        json={"text_input": "The quick", "parameters": {"max_tokens": 6, "temperature": 0}},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_name"] == "tiny" and body["model_version"] == "1"
    assert isinstance(body["text_output"], str)
    assert body["finish_reason"] in ("stop", "length") and 0 < body["completion_tokens"] <= 6


def test_generate_stream_sends_sse_events_that_add_up_to_the_whole(server: Server) -> None:
    asked = {"text_input": "The quick", "max_tokens": 8, "temperature": 0}
    whole = requests.post(server.url + "/v2/models/tiny/generate", json=asked, timeout=60)
    streamed = requests.post(
        server.url + "/v2/models/tiny/versions/1/generate_stream", json=asked, timeout=60
    )
    assert streamed.headers["Content-Type"].startswith("text/event-stream")
    events = _events(streamed.content)
    assert "".join(e["text_output"] for e in events) == whole.json()["text_output"]
    assert all("finish_reason" not in e for e in events[:-1])
    assert events[-1]["finish_reason"] == whole.json()["finish_reason"]


def test_a_python_streaming_model_streams_its_pieces(server: Server) -> None:
    streamed = requests.post(
        server.url + "/v2/models/gated/generate_stream", json={"text_input": "/"}, timeout=60
    )
    texts = [e["text_output"] for e in _events(streamed.content)]
    assert texts[:2] == ["first ", "second"]


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/v2/models/tiny/generate", {"parameters": {}}, 400, "text_input"),
        ("/v2/models/tiny/generate", {"text_input": "x", "parameters": []}, 400, "parameters"),
        ("/v2/models/tiny/generate_stream", {"text_input": "x", "temperature": 9}, 400, "temp"),
        ("/v2/models/tiny/generate_stream", {"text_input": "x", "max_tokens": 0}, 400, "max_t"),
        ("/v2/models/nope/generate_stream", {"text_input": "x"}, 404, "nope"),
        ("/v2/models/tiny/versions/7/generate", {"text_input": "x"}, 404, "7"),
    ],
)
def test_bad_requests_are_refused_before_any_stream(
    server: Server, path: str, body: dict, status: int, says: str
) -> None:
    answer = requests.post(server.url + path, json=body, timeout=30)
    assert answer.status_code == status
    assert answer.headers["Content-Type"] == "application/json"
    assert says in answer.json()["error"]
