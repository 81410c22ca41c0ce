"""V2 gRPC `ModelStreamInfer` on a real server, through `tritonclient.grpc`'s `start_stream` /
`async_stream_infer`: generative models answer one response per piece of text, others one."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from servers import Server, free_port
from waiting import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(gen_repo: Path) -> Iterator[tg.InferenceServerClient]:
    port = free_port()
    server = Server([str(gen_repo), "--workers", "1", "--grpc-port", str(port)], timeout=120)
    grpc_client = tg.InferenceServerClient(f"127.0.0.1:{port}")

    def live() -> bool:
        try:
            return bool(grpc_client.is_server_live())
        except InferenceServerException:
            return False

    eventually(live, message="the server serves gRPC")
    yield grpc_client
    grpc_client.close()
    server.stop()


def _prompt(text: str) -> tg.InferInput:
    prompt = tg.InferInput("text_input", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([text.encode()], dtype=object))
    return prompt


def _stream(client: tg.InferenceServerClient, model: str, text: str, **parameters) -> list:
    """The results of one request on a stream, up to its final response."""
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer(model, [_prompt(text)], request_id="r1", parameters=parameters)
        got = []
        while True:
            result, error = results.get(timeout=60)
            got.append((result, error))
            if error is not None:
                return got
            final = result.get_response().parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                return got
    finally:
        client.stop_stream()


def test_a_generative_model_streams_pieces_with_a_final_response(
    client: tg.InferenceServerClient,
) -> None:
    got = _stream(client, "gated", "/")
    assert all(error is None for _, error in got)
    pieces = [result.as_numpy("text_output")[0] for result, _ in got]
    assert pieces[:2] == [b"first ", b"second"]
    final = got[-1][0].get_response()
    assert final.parameters["finish_reason"].string_param == "stop"
    assert final.parameters["completion_tokens"].int64_param == 2
    assert final.id == "r1" and final.model_name == "gated"


def test_sampling_parameters_reach_the_transformers_model(
    client: tg.InferenceServerClient,
) -> None:
    got = _stream(client, "tiny", "The quick", max_tokens=5, temperature=0.0)
    final = got[-1][0].get_response()
    assert final.parameters["completion_tokens"].int64_param <= 5
    assert final.parameters["finish_reason"].string_param in ("stop", "length")


def test_a_bad_request_gets_an_error_on_the_stream(client: tg.InferenceServerClient) -> None:
    got = _stream(client, "nope", "x")
    assert got[-1][1] is not None and "nope" in str(got[-1][1])


def test_a_prompt_of_many_values_is_refused_on_its_declared_shape(
    client: tg.InferenceServerClient,
) -> None:
    prompts = tg.InferInput("text_input", [200_000], "BYTES")
    prompts.set_data_from_numpy(np.array([b"a"] * 200_000, dtype=object))
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer("gated", [prompts], request_id="many")
        _, error = results.get(timeout=60)
    finally:
        client.stop_stream()
    assert error is not None and "must hold one value, not shape [200000]" in str(error)
