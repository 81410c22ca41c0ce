"""What a stream costs, measured to its end on a real server: the bytes it sent are metered as
its `bytes_out`, and its request-duration observation is made when it ends, not at its first
piece."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from completions import held_stream

from servers import Server
from waiting import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def metered(gen_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    usage_db = tmp_path_factory.mktemp("stream-usage") / "usage.sqlite3"
    server = Server([str(gen_repo), "--workers", "1", "--usage-db", str(usage_db)], timeout=120)
    yield server
    server.stop()


def _usage_of(server: Server, model: str) -> dict | None:
    answer = requests.get(server.url + "/v2/usage", timeout=10)
    assert answer.status_code == 200, answer.text
    rows = [row for row in answer.json()["usage"] if row["model"] == model]
    return rows[0] if rows else None


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/chat/completions",
         {"messages": [{"role": "user", "content": "The quick"}], "stream": True,
          "max_tokens": 12, "stream_options": {"include_usage": True}}),
        ("/v2/models/tiny/generate_stream", {"text_input": "The quick", "max_tokens": 12}),
    ],
    ids=["openai", "generate-extension"],
)
def test_a_streams_bytes_out_are_the_bytes_it_sent(metered: Server, route: str, body: dict) -> None:
    before = _usage_of(metered, "tiny") or {"requests": 0, "bytes_out": 0}
    with requests.post(
        metered.url + route, json={"model": "tiny", **body}, stream=True, timeout=60
    ) as answer:
        assert answer.status_code == 200, answer.text
        received = b"".join(answer.iter_content(chunk_size=None))
    assert received.count(b"data: ") > 2  # several pieces, not one body

    def metered_once() -> bool:
        row = _usage_of(metered, "tiny")
        return row is not None and row["requests"] == before["requests"] + 1

    eventually(metered_once, timeout=30, message="the stream was metered")
    row = _usage_of(metered, "tiny")
    assert row is not None
    assert row["bytes_out"] - before["bytes_out"] == len(received)


def _duration_count(server: Server, model: str) -> int:
    text = requests.get(server.url + "/metrics", timeout=10).text
    pattern = rf'flaskserve_request_duration_seconds_count\{{[^}}]*model="{model}"[^}}]*\}} (\S+)'
    return sum(int(float(found)) for found in re.findall(pattern, text))


def test_a_streams_duration_is_observed_when_it_ends(metered: Server, tmp_path: Path) -> None:
    gate = tmp_path / "open"
    with held_stream(metered, "gated", str(gate)) as lines:
        # The first piece (and the response's headers) went out; the request is not over.
        assert _duration_count(metered, "gated") == 0
        gate.write_text("open")
        assert b"[DONE]" in b"".join(lines)
    eventually(lambda: _duration_count(metered, "gated") == 1, timeout=30,
               message="the stream's duration was observed once it ended")


def test_a_stream_cut_by_its_client_is_billed_for_the_bytes_it_got(
    metered: Server, tmp_path: Path
) -> None:
    marker = tmp_path / "closed"
    with requests.post(
        metered.url + "/v1/completions",
        json={"model": "endless", "prompt": str(marker), "stream": True},
        stream=True,
        timeout=60,
    ) as answer:
        pieces = answer.iter_content(chunk_size=None)
        got = next(pieces)
        assert got.startswith(b"data: ")
    eventually(marker.exists, timeout=30, message="the generation was closed")
    eventually(lambda: _usage_of(metered, "endless") is not None, timeout=30,
               message="the cut stream was metered")
    row = _usage_of(metered, "endless")
    assert row is not None and row["bytes_out"] > 0
