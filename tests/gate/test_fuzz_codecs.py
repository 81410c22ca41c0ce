"""Property tests of the tensor codecs: round trips for every datatype, and any malformed tensor
or body raising `InvalidInput` (a 400), never another exception (a 500).

Seeds are fixed (`derandomize=True`) and example counts bounded, so CI runs the same cases in
bounded time; run with `--hypothesis-seed` / a larger `max_examples` locally to search further.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flaskserve import ModelServer, Tensor
from flaskserve.core.errors import InvalidInput
from flaskserve.core.model import DATATYPES
from flaskserve.protocol.binary import decode_binary_tensor, encode_binary_tensor
from flaskserve.protocol.codec import decode_json_data, dumps, encode_json_output, loads
from flaskserve.protocol.infer import HEADER_LENGTH, parse_infer_request

pytestmark = pytest.mark.slow  # thousands of generated cases in all

FUZZ = settings(
    max_examples=80,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
#: Round trips run once per datatype (26 tests), so each gets fewer examples.
ROUND_TRIP = settings(FUZZ, max_examples=25)
NUMERIC = [name for name in DATATYPES if name != "BYTES"]
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


def arrays_of(datatype: str, finite: bool) -> st.SearchStrategy[np.ndarray]:
    if datatype == "BYTES":
        text = st.text(max_size=8).map(lambda s: s.encode("utf-8"))
        elements = text if finite else st.binary(max_size=8)
        return SHAPES.flatmap(
            lambda shape: st.lists(
                elements, min_size=math.prod(shape), max_size=math.prod(shape)
            ).map(lambda values, shape=shape: _object_array(values, shape))
        )
    dtype = DATATYPES[datatype]
    if dtype.kind == "f":
        elements = st.floats(
            width=dtype.itemsize * 8, allow_nan=not finite, allow_infinity=not finite
        )
        return hnp.arrays(dtype, SHAPES, elements=elements)
    return hnp.arrays(dtype, SHAPES)


def _object_array(values: list[bytes], shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out.reshape(shape)


def as_json(value: object) -> bytes:
    """Standard JSON (orjson refuses integers beyond 64 bits, which a client may well send)."""
    return json.dumps(value, allow_nan=False).encode()


def same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


@pytest.mark.parametrize("datatype", list(DATATYPES))
@ROUND_TRIP
@given(data=st.data())
def test_json_round_trip_keeps_values_shape_and_datatype(datatype, data) -> None:
    # JSON has no NaN or infinity, and its strings are text: those travel as binary instead.
    array = data.draw(arrays_of(datatype, finite=True))
    wire = loads(dumps({"outputs": [encode_json_output("t", array)]}))["outputs"][0]
    assert wire["datatype"] == datatype and wire["shape"] == list(array.shape)
    decoded = decode_json_data("t", wire["shape"], wire["datatype"], wire["data"])
    assert same(decoded, array)


@pytest.mark.parametrize("datatype", list(DATATYPES))
@ROUND_TRIP
@given(data=st.data())
def test_binary_round_trip_keeps_every_bit(datatype, data) -> None:
    array = data.draw(arrays_of(datatype, finite=False))
    raw = encode_binary_tensor(array, datatype)
    decoded = decode_binary_tensor("t", list(array.shape), datatype, memoryview(raw))
    assert same(decoded, array)


@FUZZ
@given(
    tensors=st.lists(
        st.sampled_from(list(DATATYPES)).flatmap(
            lambda datatype: st.tuples(
                st.just(datatype), arrays_of(datatype, finite=True), st.booleans()
            )
        ),
        min_size=1,
        max_size=4,
    )
)
def test_request_with_json_and_binary_inputs_parses_back(tensors) -> None:
    entries, chunks = [], []
    for index, (datatype, array, binary) in enumerate(tensors):
        name = f"in{index}"
        if binary:
            raw = encode_binary_tensor(array, datatype)
            chunks.append(raw)
            entries.append(
                {
                    "name": name,
                    "shape": list(array.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            )
        else:
            entries.append(encode_json_output(name, array))
    header = dumps({"inputs": entries})
    parsed = parse_infer_request(header + b"".join(chunks), str(len(header)) if chunks else None)
    for index, (datatype, array, _) in enumerate(tensors):
        assert parsed.datatypes[f"in{index}"] == datatype
        assert same(parsed.inputs[f"in{index}"], array)


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
SHAPE_LIKE = st.lists(st.integers(min_value=-2, max_value=6), max_size=4) | JSON_VALUES
DATATYPE_LIKE = st.sampled_from([*DATATYPES, "fp32", "FLOAT", ""]) | JSON_VALUES
DATA_LIKE = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=6), max_leaves=30)


def tensor_entries() -> st.SearchStrategy[dict]:
    """Tensors that are nearly right: each field valid-looking or not, in any combination."""
    return st.fixed_dictionaries(
        {},
        optional={
            "name": st.sampled_from(["input", "x", ""]) | JSON_VALUES,
            "shape": SHAPE_LIKE,
            "datatype": DATATYPE_LIKE,
            "data": DATA_LIKE,
            "parameters": st.fixed_dictionaries(
                {}, optional={"binary_data_size": st.integers(-3, 40) | JSON_VALUES}
            )
            | JSON_VALUES,
        },
    )


REQUESTS = (
    st.fixed_dictionaries(
        {},
        optional={
            "inputs": st.lists(tensor_entries() | JSON_VALUES, max_size=3) | JSON_VALUES,
            "outputs": st.lists(
                st.fixed_dictionaries(
                    {}, optional={"name": JSON_VALUES, "parameters": JSON_VALUES}
                ),
                max_size=2,
            )
            | JSON_VALUES,
            "id": JSON_VALUES,
            "parameters": JSON_VALUES,
        },
    )
    | JSON_VALUES
)


@FUZZ
@given(request=REQUESTS, tail=st.binary(max_size=48), header=st.booleans())
def test_any_malformed_request_is_invalid_input(request, tail, header) -> None:
    head = as_json(request)
    with contextlib.suppress(InvalidInput):
        parse_infer_request(head + tail if header else head, str(len(head)) if header else None)


@FUZZ
@given(shape=SHAPE_LIKE, datatype=DATATYPE_LIKE, data=DATA_LIKE)
def test_any_json_tensor_decodes_or_is_invalid_input(shape, datatype, data) -> None:
    entry = {"name": "t", "shape": shape, "datatype": datatype, "data": data}
    with contextlib.suppress(InvalidInput):
        parse_infer_request(as_json({"inputs": [entry]}))


@FUZZ
@given(
    shape=st.lists(st.integers(min_value=0, max_value=5), max_size=3),
    datatype=st.sampled_from(list(DATATYPES)),
    raw=st.binary(max_size=64)
    | st.lists(st.integers(0, 12), max_size=5).map(
        lambda sizes: b"".join(struct.pack("<I", n) + b"a" * n for n in sizes)
    ),
)
def test_any_binary_chunk_decodes_or_is_invalid_input(shape, datatype, raw) -> None:
    try:
        decoded = decode_binary_tensor("t", shape, datatype, memoryview(raw))
    except InvalidInput:
        return
    assert list(decoded.shape) == shape


@pytest.mark.parametrize("datatype", ["FP16", "FP32"])
def test_json_floats_beyond_the_datatype_range_are_invalid_input(datatype) -> None:
    with pytest.raises(InvalidInput, match="too large"):
        decode_json_data("t", [2], datatype, [1.0, 1e300])


@pytest.fixture(scope="module")
def typed_app():
    """One input per datatype, echoed back: what the server answers for any decoded tensor."""
    server = ModelServer()
    for datatype in DATATYPES:
        server.model(
            f"echo_{datatype.lower()}",
            inputs=[Tensor("x", datatype, [-1])],
            outputs=[Tensor("y", datatype, [-1])],
        )(lambda x: x)
    return server.app


@FUZZ
@given(datatype=st.sampled_from(list(DATATYPES)), entry=tensor_entries())
def test_server_answers_any_tensor_with_200_or_a_4xx(typed_app, datatype, entry) -> None:
    response = typed_app.test_client().post(
        f"/v2/models/echo_{datatype.lower()}/infer",
        data=as_json({"inputs": [entry]}),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.get_json()
    assert "error" in response.get_json() or response.status_code == 200


@FUZZ
@given(body=st.binary(max_size=64), length=st.integers(-2, 80) | st.text(max_size=4))
def test_server_answers_any_binary_body_with_a_4xx(typed_app, body, length) -> None:
    response = typed_app.test_client().post(
        "/v2/models/echo_fp32/infer", data=body, headers={HEADER_LENGTH: str(length)}
    )
    assert 400 <= response.status_code < 500
