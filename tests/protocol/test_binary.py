"""The binary tensor data extension, end to end: the official `tritonclient.http` against a real
server, binary and JSON paths compared, and malformed binary bodies answered with 400."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as triton

from flaskserve.core.model import DATATYPES
from python_models import python_toml, write_python_model
from servers import Server

pytestmark = pytest.mark.e2e  # one server answers the whole module

#: A python model with one input and one output per datatype: each output is its input
#: reversed along the last axis (BOOL also negated, BYTES also upper-cased), so every element
#: and the shape must survive the trip both ways.
MIRROR_PY = """\
import numpy as np


class Mirror:
    def predict(self, **inputs):
        out = {}
        for name, array in inputs.items():
            flipped = array[..., ::-1]
            kind = name[len("in_"):]
            if kind == "BOOL":
                flipped = ~flipped
            elif kind == "BYTES":
                flipped = np.array([v.upper() for v in flipped.ravel()], dtype=object).reshape(
                    flipped.shape
                )
            out["out_" + kind] = flipped
        return out
"""


def mirror_toml(datatypes: Iterable[str] = DATATYPES) -> str:
    """The mirror's model.toml: `in_<datatype>` and `out_<datatype>`, [-1, -1], per datatype."""
    return python_toml(
        "mirror:Mirror",
        {f"in_{datatype}": (datatype, [-1, -1]) for datatype in datatypes},
        {f"out_{datatype}": (datatype, [-1, -1]) for datatype in datatypes},
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, digits_model: Path):
    root = tmp_path_factory.mktemp("binary-repo")
    write_python_model(root, "mirror", mirror_toml(), MIRROR_PY)
    shutil.copytree(digits_model, root / "digits")
    running = Server([str(root), "--workers", "1"])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"))


def sample(datatype: str) -> np.ndarray:
    """A 2x3 array that exercises the datatype's range (extremes, negatives, fractions)."""
    if datatype == "BYTES":
        return np.array([[b"a", b"", "\u00e9t\u00e9".encode()], [b"xyz", b"0", b"  "]],
                        dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    dtype = DATATYPES[datatype]
    if dtype.kind == "f":
        return np.array([[0.5, -1.25, 3.0], [1e4, -0.0, 7.75]], dtype=dtype)
    info = np.iinfo(dtype)
    return np.array([[info.min, 0, info.max], [1, info.max - 1, 7]], dtype=dtype)


def expected(datatype: str, array: np.ndarray) -> np.ndarray:
    flipped = array[..., ::-1]
    if datatype == "BOOL":
        return ~flipped
    if datatype == "BYTES":
        return np.array([v.upper() for v in flipped.ravel()], dtype=object).reshape(flipped.shape)
    return flipped


def mirror_inputs(binary: bool) -> list[triton.InferInput]:
    inputs = []
    for datatype in DATATYPES:
        array = sample(datatype)
        tensor = triton.InferInput(f"in_{datatype}", list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def mirror_outputs(binary: bool) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(f"out_{d}", binary_data=binary) for d in DATATYPES]


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_every_datatype_round_trips_through_tritonclient(client, binary_in, binary_out) -> None:
    result = client.infer(
        "mirror", mirror_inputs(binary_in), outputs=mirror_outputs(binary_out)
    )
    for datatype in DATATYPES:
        got = result.as_numpy(f"out_{datatype}")
        want = expected(datatype, sample(datatype))
        assert got.shape == want.shape, datatype
        assert got.dtype == want.dtype, datatype
        if datatype == "BYTES" and not binary_out:  # JSON carries BYTES as text
            got = np.array([v.encode() for v in got.ravel()], dtype=object).reshape(got.shape)
        assert got.tolist() == want.tolist(), datatype
        output = result.get_output(f"out_{datatype}")
        assert ("binary_data_size" in output.get("parameters", {})) is binary_out


def test_binary_and_json_paths_give_identical_digits_predictions(client, digits_data) -> None:
    features, labels = digits_data
    answers = {}
    for binary in (True, False):
        tensor = triton.InferInput("input", [32, 64], "FP32")
        tensor.set_data_from_numpy(features[:32], binary_data=binary)
        result = client.infer(
            "digits", [tensor],
            outputs=[triton.InferRequestedOutput(n, binary_data=binary)
                     for n in ("label", "probabilities")],
        )
        answers[binary] = (result.as_numpy("label"), result.as_numpy("probabilities"))
    np.testing.assert_array_equal(answers[True][0], answers[False][0])
    np.testing.assert_array_equal(answers[True][1], answers[False][1])
    assert (answers[True][0] == labels[:32]).mean() >= 0.95


def test_all_outputs_come_back_binary_when_the_client_names_none(client) -> None:
    tensor = triton.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
    result = client.infer("digits", [tensor])  # tritonclient sets binary_data_output
    for name in ("label", "probabilities"):
        assert "binary_data_size" in result.get_output(name)["parameters"]
    assert result.as_numpy("probabilities").shape == (1, 10)


def test_bytes_that_are_not_utf8_survive_the_binary_path(client) -> None:
    raw = np.array([[b"\xff\x00\xfe", b"\x80"]], dtype=object)
    inputs = []
    for datatype in DATATYPES:
        array = raw if datatype == "BYTES" else sample(datatype)
        tensor = triton.InferInput(f"in_{datatype}", list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    result = client.infer("mirror", inputs, outputs=mirror_outputs(True))
    assert result.as_numpy("out_BYTES").tolist() == [[b"\x80", b"\xff\x00\xfe"]]


def test_server_metadata_lists_the_binary_extension(server) -> None:
    metadata = requests.get(f"{server.url}/v2", timeout=5).json()
    assert "binary_tensor_data" in metadata["extensions"]


# -- malformed binary requests ----------------------------------------------------------------

ROW = np.arange(64, dtype=np.float32)


def binary_request(header: dict, binary: bytes, header_length: int | None = None,
                   url: str = "") -> requests.Response:
    head = json.dumps(header).encode()
    length = len(head) if header_length is None else header_length
    return requests.post(
        f"{url}/v2/models/digits/infer",
        data=head + binary,
        headers={"Inference-Header-Content-Length": str(length),
                 "Content-Type": "application/octet-stream"},
        timeout=10,
    )


def digits_header(size: int, shape: tuple[int, ...] = (1, 64)) -> dict:
    return {"inputs": [{"name": "input", "shape": list(shape), "datatype": "FP32",
                        "parameters": {"binary_data_size": size}}]}


def test_a_well_formed_binary_request_by_hand_is_answered(server) -> None:
    response = binary_request(digits_header(256), ROW.tobytes(), url=server.url)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["name"] == "label"


@pytest.mark.parametrize(
    ("header", "binary", "header_length", "message"),
    [
        pytest.param(digits_header(512), ROW.tobytes(), None, "runs past the end of the body",
                     id="size-beyond-body"),
        pytest.param(digits_header(128), ROW.tobytes()[:128], None, "needs 256 bytes",
                     id="size-lies-about-shape"),
        pytest.param(digits_header(256), ROW.tobytes() + b"\x00" * 8, None,
                     "8 bytes of binary data follow the inputs", id="leftover-bytes"),
        pytest.param(digits_header(256), ROW.tobytes(), 10_000,
                     "Inference-Header-Content-Length is 10000", id="header-beyond-body"),
        pytest.param(digits_header(256), ROW.tobytes(), 0,
                     "Inference-Header-Content-Length is 0", id="header-zero"),
        pytest.param(digits_header(256), ROW.tobytes(), 20, "not valid JSON",
                     id="header-cuts-the-json"),
        pytest.param(digits_header(-4), b"", None, "binary_data_size must be a non-negative",
                     id="negative-size"),
        pytest.param(digits_header(256, (1, 64)) | {"inputs": [{"name": "input", "shape": [1, 64],
                     "datatype": "FP32"}]}, ROW.tobytes(), None, "neither 'data' nor",
                     id="no-size-no-data"),
    ],
)
def test_malformed_binary_requests_get_a_400_naming_the_problem(
    server, header, binary, header_length, message
) -> None:
    response = binary_request(header, binary, header_length, url=server.url)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_a_non_numeric_header_length_is_a_400(server) -> None:
    response = requests.post(
        f"{server.url}/v2/models/digits/infer",
        data=json.dumps(digits_header(256)).encode() + ROW.tobytes(),
        headers={"Inference-Header-Content-Length": "twelve"},
        timeout=10,
    )
    assert response.status_code == 400
    assert "must be an integer" in response.json()["error"]


@pytest.mark.parametrize(
    ("chunk", "message"),
    [
        pytest.param(struct.pack("<I", 50) + b"short", "declares 50 bytes but only 5 remain",
                     id="element-longer-than-data"),
        pytest.param(struct.pack("<I", 4) + b"abcd" + b"\x00\x00", "ends after 1 of 2 elements",
                     id="truncated-length-prefix"),
        pytest.param(struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b" + b"zz",
                     "2 bytes are left over", id="bytes-left-over"),
    ],
)
def test_malformed_binary_bytes_tensors_get_a_400(server, chunk, message) -> None:
    header = {"inputs": []}
    body = b""
    for datatype in DATATYPES:
        if datatype == "BYTES":
            data = chunk
            shape = [1, 2]
        else:
            array = sample(datatype)
            data = array.tobytes()
            shape = list(array.shape)
        header["inputs"].append({"name": f"in_{datatype}", "shape": shape, "datatype": datatype,
                                 "parameters": {"binary_data_size": len(data)}})
        body += data
    head = json.dumps(header).encode()
    response = requests.post(
        f"{server.url}/v2/models/mirror/infer",
        data=head + body,
        headers={"Inference-Header-Content-Length": str(len(head))},
        timeout=10,
    )
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert "Traceback" not in response.text


def test_the_binary_response_header_length_matches_its_json(server) -> None:
    response = binary_request(
        digits_header(256) | {"parameters": {"binary_data_output": True}}, ROW.tobytes(),
        url=server.url,
    )
    assert response.status_code == 200
    length = int(response.headers["Inference-Header-Content-Length"])
    head = json.loads(response.content[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
    assert length + sum(sizes) == len(response.content)
    label = np.frombuffer(response.content[length:length + sizes[0]], dtype="<i8")
    assert label.shape == (1,)
