"""Bounded work per request, on every front door, against one real server (`--auth`, gRPC on).

A request is admitted on what it declares (V2 and gRPC `shape`, the binary header,
`len(instances)`, the CSV line count, `len(input)`) before its payload is decoded, by one check
all front doors share. So 200,000 short strings are refused with 400 (gRPC INVALID_ARGUMENT),
naming the limit, whichever door they come through, and the worker's memory barely moves. That
every door refuses the same hostile inputs the same way is tests/protocol/test_front_doors.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from door_clients import (
    FINE,
    HUGE,
    MANY,
    STRINGS,
    Answer,
    Door,
    Sent,
    Served,
    as_json,
    auth,
    grpc_raw,
    grpc_typed,
    openai_embeddings,
    post,
    sagemaker_csv,
    sagemaker_json,
    serve_every_door,
    v1,
    v2_binary,
    v2_json,
)

#: One real server (`door_clients.serve_every_door`), which boots slowly on a shared machine.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

LIMIT = 4096  # the default of --max-batch-rows


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_every_door(tmp_path_factory) as running:
        yield running


# -- 200,000 strings cost the worker nothing ------------------------------------------------------


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


#: The doors 200,000 strings can come through, and the model each sends them to.
MANY_STRINGS: dict[str, tuple[Door, str]] = {
    "openai": (openai_embeddings, "letters"),
    "v2-json": (v2_json, "letters"),
    "v2-binary": (v2_binary, "letters"),
    "v1": (v1, "letters"),
    "sagemaker-json": (sagemaker_json, "letters"),
    "sagemaker-csv": (sagemaker_csv, "pair"),
    "grpc-raw": (grpc_raw, "letters"),
    "grpc-typed": (grpc_typed, "letters"),
}


def answers(served: Served) -> None:
    assert v2_json(served, Sent("letters", FINE, "key")) == Answer(200, "")


@pytest.mark.parametrize("door", list(MANY_STRINGS))
def test_200000_short_strings_are_refused_before_decoding_and_the_worker_stays_small(
    served: Served, door: str
) -> None:
    (worker,) = served.server.worker_pids()
    answers(served)
    before = rss_kib(worker)
    send, model = MANY_STRINGS[door]
    status, message = send(served, Sent(model, HUGE, "key"))
    grown_mib = (rss_kib(worker) - before) / 1024
    assert status == 400, message
    assert f"has {MANY} rows" in message and f"at most {LIMIT}" in message
    assert "--max-batch-rows" in message and "max_request_rows" in message
    assert grown_mib < 100, f"the worker grew by {grown_mib:.0f} MiB"
    answers(served)


# -- the limit itself -----------------------------------------------------------------------------


def embeddings(served: Served, model: str, count: int) -> tuple[int, Any]:
    body = as_json({"model": model, "input": STRINGS[:count]})
    return post(served, "/v1/embeddings", body, auth(served.key))


def test_a_request_at_the_row_limit_is_served_and_one_row_more_is_not(served: Served) -> None:
    status, body = embeddings(served, "letters", LIMIT)
    assert status == 200, body
    assert len(body["data"]) == LIMIT
    status, body = embeddings(served, "letters", LIMIT + 1)
    assert status == 400
    assert body["error"]["param"] == "input"
    assert f"has {LIMIT + 1} rows" in body["error"]["message"]


def test_a_model_toml_that_raises_the_limit_lets_a_larger_request_through(
    served: Served,
) -> None:
    status, body = embeddings(served, "letters_wide", 10_000)
    assert status == 200, body
    assert len(body["data"]) == 10_000
    status, body = embeddings(served, "letters_wide", 10_001)
    assert status == 400 and "at most 10000" in body["error"]["message"]
