"""The same hostile inputs through every front door of one real server (`--auth`, gRPC on): each
door refuses each the same way, in its own wire format.

The doors (`door_clients`): V2 HTTP (JSON and binary), V1, SageMaker (JSON and CSV), OpenAI
embeddings, chat and completions, the V2 generate extension, V2 gRPC `ModelInfer` (raw and typed
contents) and `ModelStreamInfer` (a plain and a generative model), and model metadata and
statistics over HTTP and gRPC. The inputs: shapes no array can take (`[2**62, 0, 4]`, `[2**62]`,
65 dimensions, a negative size), more rows than `--max-batch-rows`, a wrong datatype, no inputs,
a sampling setting no generation takes, a body over `--max-request-bytes` (its length declared,
or chunked), an unknown model, a model that failed to load, no key, a key for another model, a
key past its rate, and an admin route with a plain key. Every door answers each with the same
status (gRPC: the code of that status; a stream's `error_message` must say what `ModelInfer`
says of the same request), a message that says what to fix, and no traceback. A body over the
limit is refused by gRPC's own library (RESOURCE_EXHAUSTED, on a stream too), by HTTP with 413
in the door's shape; after it the door serves a fine request.

A door that cannot express an input (V1 has no declared shape, CSV no datatype, a chat no
tensor) is left out of that row, not skipped; a `fine` row checks that each door's request is
well formed, so a refusal in the table is the door's answer to the hostile part alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from door_clients import (
    BAD_SETTING,
    EMPTY,
    FINE,
    HUGE,
    HUGE_DIMS,
    HUGE_ROWS,
    MANY,
    MANY_DIMS,
    NEGATIVE,
    OVERSIZED,
    OVERSIZED_CHUNKED,
    WRONG_TYPE,
    Answer,
    Door,
    Sent,
    Served,
    auth,
    call,
    grpc_answer,
    grpc_metadata,
    grpc_raw,
    grpc_request,
    grpc_statistics,
    grpc_stream,
    grpc_stream_generate,
    grpc_typed,
    http_error,
    openai_chat,
    openai_completions,
    openai_embeddings,
    sagemaker_csv,
    sagemaker_json,
    serve_every_door,
    v1,
    v2_binary,
    v2_generate,
    v2_json,
    v2_metadata,
    v2_statistics,
)
from tritonclient.grpc import service_pb2

#: One real server (`door_clients.serve_every_door`), which boots slowly on a shared machine.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_every_door(tmp_path_factory) as running:
        yield running


#: Each door, the model it serves, and the inputs it can express besides those of the gate and
#: the repository (`EVERY_DOOR`, and `RATE_LIMITED` and `NOT_READY` where a model runs).
TENSOR_KINDS = (HUGE_DIMS, HUGE_ROWS, MANY_DIMS, NEGATIVE, HUGE, WRONG_TYPE, EMPTY)
NESTED_KINDS = (MANY_DIMS, HUGE, WRONG_TYPE, EMPTY)
#: A body over `--max-request-bytes`: every door that takes a body; HTTP ones chunked too.
HTTP_BODY, GRPC_BODY = (OVERSIZED, OVERSIZED_CHUNKED), (OVERSIZED,)
DOORS: dict[str, tuple[Door, str, tuple[str, ...]]] = {
    "v2-json": (v2_json, "letters", (*TENSOR_KINDS, *HTTP_BODY)),
    "v2-binary": (v2_binary, "letters", (*TENSOR_KINDS, *HTTP_BODY)),
    "v1": (v1, "letters", (*NESTED_KINDS, *HTTP_BODY)),
    "sagemaker-json": (sagemaker_json, "letters", (*NESTED_KINDS, *HTTP_BODY)),
    "sagemaker-csv": (sagemaker_csv, "pair", (HUGE, WRONG_TYPE, EMPTY, *HTTP_BODY)),
    "openai-embeddings": (openai_embeddings, "letters", (*NESTED_KINDS, *HTTP_BODY)),
    "openai-chat": (openai_chat, "parrot", (WRONG_TYPE, BAD_SETTING, *HTTP_BODY)),
    "openai-completions": (openai_completions, "parrot", (WRONG_TYPE, BAD_SETTING, *HTTP_BODY)),
    "grpc-raw": (grpc_raw, "letters", (*TENSOR_KINDS, *GRPC_BODY)),
    "grpc-typed": (grpc_typed, "letters", (*TENSOR_KINDS, *GRPC_BODY)),
    "grpc-stream": (grpc_stream, "letters", (*TENSOR_KINDS, *GRPC_BODY)),
    "grpc-stream-generate": (
        grpc_stream_generate,
        "parrot",
        (*TENSOR_KINDS[:4], WRONG_TYPE, EMPTY, BAD_SETTING, *GRPC_BODY),
    ),
    "v2-generate": (v2_generate, "parrot", (WRONG_TYPE, BAD_SETTING, *HTTP_BODY)),
    "v2-metadata": (v2_metadata, "letters", ()),
    "grpc-metadata": (grpc_metadata, "letters", ()),
    "v2-statistics": (v2_statistics, "letters", ()),
    "grpc-statistics": (grpc_statistics, "letters", ()),
}

UNKNOWN, NO_KEY, OTHER_KEY = "unknown-model", "no-key", "key-for-another-model"
RATE_LIMITED, NOT_READY = "rate-limited", "model-not-ready"
#: The cases every door can express, whatever its wire format.
EVERY_DOOR = (UNKNOWN, NO_KEY, OTHER_KEY, FINE)
#: The doors that describe a model rather than run it: a key's rate does not apply, and a model
#: that is not ready is described (its state and reason), not refused.
DESCRIBES = ("v2-metadata", "grpc-metadata", "v2-statistics", "grpc-statistics")

#: (case, the HTTP status every door answers, the words every door's message holds)
CASES = {
    HUGE_DIMS: (400, "larger than any array"),
    HUGE_ROWS: (400, "larger than any array"),
    MANY_DIMS: (400, "at most 64"),
    NEGATIVE: (400, "non-negative"),
    HUGE: (400, f"has {MANY} rows"),
    WRONG_TYPE: (400, "BYTES"),
    EMPTY: (400, "non-empty"),
    BAD_SETTING: (400, "'max_tokens' must be an integer >= 1"),
    OVERSIZED: (413, "larger than"),
    OVERSIZED_CHUNKED: (413, "larger than"),
    UNKNOWN: (404, "unknown model 'nope'"),
    NO_KEY: (401, "needs an API key"),
    OTHER_KEY: (403, "may not use model"),
    RATE_LIMITED: (429, "is limited to"),
    NOT_READY: (503, "is not ready"),
    FINE: (200, ""),
}
#: Where a door's own words say better what to fix (OpenAI's `input` has no shape: nested lists
#: are token ids; CSV and OpenAI's JSON fields are not tensors).
WORDS = {
    ("openai-embeddings", MANY_DIMS): "token ids",
    ("openai-embeddings", WRONG_TYPE): "must be a string",
    ("sagemaker-csv", WRONG_TYPE): "not a number",
    ("openai-chat", WRONG_TYPE): "must be a string",
    ("openai-completions", WRONG_TYPE): "must be a string",
    ("v2-generate", WRONG_TYPE): "must be a string",
}


def sent_for(case: str, model: str) -> Sent:
    if case == UNKNOWN:
        return Sent("nope", FINE, "key")
    if case == NO_KEY:
        return Sent(model, FINE, None)
    if case == OTHER_KEY:
        return Sent(model, FINE, "wide_key")
    if case == RATE_LIMITED:
        return Sent(model, FINE, "spent_key")
    if case == NOT_READY:
        return Sent("broken", FINE, "key")
    return Sent(model, case, "key")


def expresses(door: str, case: str) -> bool:
    """Whether `door` can send `case` at all."""
    if case in (RATE_LIMITED, NOT_READY):
        return door not in DESCRIBES
    return case in EVERY_DOOR or case in DOORS[door][2]


ROWS = [
    pytest.param(door, case, id=f"{case}-{door}")
    for case in CASES
    for door in DOORS
    if expresses(door, case)
]


@pytest.mark.parametrize(("door", "case"), ROWS)
def test_every_front_door_refuses_the_same_hostile_input_the_same_way_in_its_own_format(
    served: Served, door: str, case: str
) -> None:
    send, model, _ = DOORS[door]
    status, words = CASES[case]
    if case == OVERSIZED and door.startswith("grpc"):
        status = 429  # RESOURCE_EXHAUSTED, gRPC's own "message larger than max"
    answer = send(served, sent_for(case, model))
    assert answer.status == status, answer.message
    assert WORDS.get((door, case), words) in answer.message
    assert "Traceback" not in answer.message and "internal" not in answer.message
    if case in (OVERSIZED, OVERSIZED_CHUNKED):  # the door still serves
        assert send(served, sent_for(FINE, model)) == (200, "")


@pytest.mark.parametrize("case", [UNKNOWN, NOT_READY])
def test_a_model_no_door_can_run_is_one_sentence_on_every_door(served: Served, case: str) -> None:
    """The repository says why, once: every door that runs a model passes its words on."""
    told = {
        door: send(served, sent_for(case, model)).message
        for door, (send, model, _) in DOORS.items()
        if door not in DESCRIBES
    }
    assert len(set(told.values())) == 1, told


@pytest.mark.parametrize("door", [door for door, (_, _, kinds) in DOORS.items() if EMPTY in kinds])
def test_an_unknown_model_is_404_whatever_the_body_says_on_every_door(
    served: Served, door: str
) -> None:
    """Each door looks the model up before it reads the body: a request for a model that is not
    served is told so, not what else is wrong with it."""
    send, _, _ = DOORS[door]
    answer = send(served, Sent("nope", EMPTY, "key"))
    assert answer.status == 404, answer.message
    assert CASES[UNKNOWN][1] in answer.message


# -- admin routes with a plain key -----------------------------------------------------------------


def http_admin(method: str, path: str) -> Callable[[Served, str], Answer]:
    def send(served: Served, key: str) -> Answer:
        body = b"{}" if method == "POST" else None
        return http_error(*call(served, method, path, body, auth(key)))

    return send


def grpc_admin(rpc: str, request: object) -> Callable[[Served, str], Answer]:
    def send(served: Served, key: str) -> Answer:
        return grpc_answer(getattr(served.stub, rpc), request, key)

    return send


ADMIN_DOORS = {
    "http-repository-index": http_admin("POST", "/v2/repository/index"),
    "http-repository-load": http_admin("POST", "/v2/repository/models/letters/load"),
    "http-repository-unload": http_admin("POST", "/v2/repository/models/letters/unload"),
    "http-all-statistics": http_admin("GET", "/v2/models/stats"),
    "http-usage": http_admin("GET", "/v2/usage"),
    "http-metrics": http_admin("GET", "/metrics"),
    "grpc-repository-index": grpc_admin("RepositoryIndex", service_pb2.RepositoryIndexRequest()),
    "grpc-repository-load": grpc_admin(
        "RepositoryModelLoad", service_pb2.RepositoryModelLoadRequest(model_name="letters")
    ),
    "grpc-repository-unload": grpc_admin(
        "RepositoryModelUnload", service_pb2.RepositoryModelUnloadRequest(model_name="letters")
    ),
    "grpc-all-statistics": grpc_admin("ModelStatistics", service_pb2.ModelStatisticsRequest()),
}


@pytest.mark.parametrize("door", list(ADMIN_DOORS))
def test_an_admin_route_refuses_a_plain_key_on_every_front_door(served: Served, door: str) -> None:
    answer = ADMIN_DOORS[door](served, served.key)
    assert answer.status == 403, answer.message
    assert "is not an admin key" in answer.message


@pytest.mark.parametrize("door", ["http-repository-index", "grpc-repository-index"])
def test_an_admin_key_is_let_through_where_a_plain_key_is_not(served: Served, door: str) -> None:
    assert ADMIN_DOORS[door](served, served.admin_key).status == 200


def test_a_stream_refusal_is_one_response_and_the_stream_serves_the_next_request(
    served: Served,
) -> None:
    requests = [grpc_request("letters", NEGATIVE), grpc_request("letters", FINE)]
    metadata = [("authorization", f"Bearer {served.key}")]
    refused, answered = served.stub.ModelStreamInfer(iter(requests), metadata=metadata, timeout=60)
    assert "non-negative" in refused.error_message
    assert not answered.error_message and answered.infer_response.outputs

