"""Generation as a metered service, on real servers: tokens billed per key (a stream cut short
included), token quotas, generation metrics, overload refused before a stream, and SIGTERM
letting a running stream finish."""

from __future__ import annotations

import os
import queue
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
import requests
import tritonclient.grpc as tg
from completions import held_stream, raw_completion, receive_ticks

from flaskserve.gate.keys import add_key
from python_models import write_python_model
from servers import Server, free_port
from waiting import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def keyed(gen_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    folder = tmp_path_factory.mktemp("gen-keys")
    keys_file = folder / "keys.toml"
    keys = {
        "alice": add_key(keys_file, "alice"),
        "thrifty": add_key(keys_file, "thrifty", tokens=1),
        "thrifty-grpc": add_key(keys_file, "thrifty-grpc", tokens=1),
        "leaver": add_key(keys_file, "leaver"),
        "ops": add_key(keys_file, "ops", admin=True),
    }
    grpc_port = free_port()
    server = Server(
        [str(gen_repo), "--workers", "1", "--auth", str(keys_file), "--grpc-port", str(grpc_port)],
        timeout=120,
    )
    server.grpc_port = grpc_port  # type: ignore[attr-defined]
    yield server, keys
    server.stop()


def _usage(server: Server, admin: str) -> dict[tuple[str, str], dict]:
    answer = requests.get(
        server.url + "/v2/usage", headers={"Authorization": f"Bearer {admin}"}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    return {(row["key"], row["model"]): row for row in answer.json()["usage"]}


def test_tokens_are_billed_per_key_and_counted_in_metrics(keyed: tuple) -> None:
    server, keys = keyed
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=keys["alice"], max_retries=0)
    reply = client.completions.create(model="tiny", prompt="The quick", max_tokens=5)
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = chunks[-1].usage
    assert reply.usage is not None and streamed is not None
    prompt = reply.usage.prompt_tokens + streamed.prompt_tokens
    completion = reply.usage.completion_tokens + streamed.completion_tokens

    def billed() -> bool:
        row = _usage(server, keys["ops"]).get(("alice", "tiny"))
        return row is not None and row["requests"] == 2

    eventually(billed, timeout=30, message="alice's two requests were metered")
    row = _usage(server, keys["ops"])[("alice", "tiny")]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, completion)
    metrics = requests.get(
        server.url + "/metrics", headers={"Authorization": f"Bearer {keys['ops']}"}, timeout=10
    ).text
    assert 'flaskserve_key_tokens_total{key="alice",kind="completion",model="tiny"}' in metrics
    assert "flaskserve_generation_time_to_first_token_seconds_count" in metrics
    assert "flaskserve_generation_time_per_output_token_seconds_count" in metrics
    assert 'flaskserve_generation_tokens_total{kind="completion",model="tiny"' in metrics


def test_a_spent_token_quota_is_refused_before_the_stream(keyed: tuple) -> None:
    server, keys = keyed
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=keys["thrifty"], max_retries=0)
    client.completions.create(model="tiny", prompt="fox", max_tokens=2)  # within the quota

    def refused() -> bool:
        try:
            client.completions.create(model="tiny", prompt="fox", max_tokens=2, stream=True)
        except openai.RateLimitError as exc:
            assert "tokens" in exc.message
            return True
        return False

    eventually(refused, timeout=30, message="the spent quota is refused with 429")


def test_a_spent_token_quota_is_refused_on_a_grpc_stream_too(keyed: tuple) -> None:
    server, keys = keyed
    key = keys["thrifty-grpc"]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    client.completions.create(model="tiny", prompt="fox", max_tokens=2)  # spends the quota
    grpc_client = tg.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    prompt = tg.InferInput("text_input", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"fox"], dtype=object))

    def refused() -> bool:
        results: queue.Queue = queue.Queue()
        grpc_client.start_stream(
            callback=lambda result, error: results.put(error),
            headers={"authorization": f"Bearer {key}"},
        )
        try:
            grpc_client.async_stream_infer("tiny", [prompt], parameters={"max_tokens": 2})
            error = results.get(timeout=60)
        finally:
            grpc_client.stop_stream()
        return error is not None and "tokens" in str(error)

    try:
        eventually(refused, timeout=30, message="the spent quota is refused on the gRPC stream")
    finally:
        grpc_client.close()


def test_a_client_that_leaves_is_billed_for_what_it_got(keyed: tuple, tmp_path: Path) -> None:
    server, keys = keyed
    marker = tmp_path / "closed"
    body = {"model": "endless", "prompt": str(marker), "stream": True}
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(raw_completion(body, keys["leaver"]))
        receive_ticks(sock, 3)
    eventually(marker.exists, timeout=30, message="the generation stopped")

    def billed() -> bool:
        row = _usage(server, keys["ops"]).get(("leaver", "endless"))
        return row is not None and row["completion_tokens"] >= 3

    eventually(billed, timeout=30, message="the tokens sent before the client left are billed")


def test_overload_is_refused_before_a_stream_starts(
    start_server, gen_repo: Path, tmp_path: Path
) -> None:
    server = start_server(
        [str(gen_repo), "--workers", "1", "--threads", "1", "--max-queue-ms", "200"],
        timeout=120,
    )
    gate = tmp_path / "open"
    with held_stream(server, "gated", str(gate)) as lines:
        refused = requests.post(
            server.url + "/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": True},
            timeout=30,
        )
        assert refused.status_code == 503 and "Retry-After" in refused.headers
        assert refused.json()["error"]["type"] == "server_error"
        gate.write_text("open")
        assert b"[DONE]" in b"".join(lines)


def test_sigterm_lets_a_running_stream_finish(start_server, gen_repo: Path, tmp_path: Path) -> None:
    server = start_server([str(gen_repo), "--workers", "1", "--graceful-timeout", "30"])
    gate = tmp_path / "open"
    with held_stream(server, "gated", str(gate)) as lines:
        os.killpg(server.process.pid, signal.SIGTERM)
        gate.write_text("open")
        rest = b"".join(lines)
    assert b'"second"' in rest and rest.endswith(b"[DONE]")
    server.process.wait(timeout=30)


UNLOADABLE_PY = '''\
import time
from pathlib import Path


class Unloadable:
    """Like `gated`, but its unload cuts a generation still waiting: what unloading a
    transformers model does to the streams of its batch."""

    unloaded = False

    def predict(self, text_input):
        gate = Path(text_input.strip())
        yield "first "
        deadline = time.monotonic() + 60
        while not gate.exists() and not self.unloaded and time.monotonic() < deadline:
            time.sleep(0.01)
        yield "CUT" if self.unloaded else "second"

    def unload(self):
        self.unloaded = True
'''


def test_a_sighup_reload_does_not_cut_a_running_stream(start_server, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    toml = 'runtime = "python"\nentrypoint = "unloadable:Unloadable"\n'
    write_python_model(root, "unloadable", toml, UNLOADABLE_PY)
    server = start_server([str(root), "--workers", "1", "--graceful-timeout", "30"])
    gate = tmp_path / "open"
    with held_stream(server, "unloadable", str(gate)) as lines:
        os.kill(server.process.pid, signal.SIGHUP)
        server.wait_for_log("Worker reloaded")
        # New requests run on the new app while the stream still runs on the old one.
        fresh = requests.post(
            server.url + "/v1/completions",
            json={"model": "unloadable", "prompt": "/", "max_tokens": 1},
            timeout=30,
        )
        assert fresh.status_code == 200
        gate.write_text("open")
        rest = b"".join(lines)
    assert b'"second"' in rest and b"CUT" not in rest and rest.endswith(b"[DONE]")
