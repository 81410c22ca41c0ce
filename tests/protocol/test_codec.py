"""JSON tensor decoding: every datatype round-trips, every malformed tensor is a clear 400."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from flaskserve.core.errors import InvalidInput
from flaskserve.core.model import DATATYPES
from flaskserve.protocol.codec import decode_json_data, encode_json_output, loads, tensor_header

NUMERIC_SAMPLES = {
    "BOOL": [True, False, True, True],
    "UINT8": [0, 1, 254, 255],
    "UINT16": [0, 1, 2, 65535],
    "UINT32": [0, 1, 2, 4294967295],
    "UINT64": [0, 1, 2, 18446744073709551615],
    "INT8": [-128, 0, 1, 127],
    "INT16": [-32768, 0, 1, 32767],
    "INT32": [-2147483648, 0, 1, 2147483647],
    "INT64": [-9223372036854775808, 0, 1, 9223372036854775807],
    "FP16": [0.5, -1.0, 2.0, 1024.0],
    "FP32": [0.25, -1.5, 3.0, 1e30],
    "FP64": [0.1, -1e300, 3.0, 2.5],
}


@pytest.mark.parametrize("datatype", sorted(NUMERIC_SAMPLES))
def test_every_numeric_datatype_decodes_to_its_dtype_and_encodes_back(datatype: str) -> None:
    data = NUMERIC_SAMPLES[datatype]
    array = decode_json_data("x", [2, 2], datatype, data)
    assert array.dtype == DATATYPES[datatype]
    assert array.shape == (2, 2)
    encoded = orjson.loads(
        orjson.dumps(encode_json_output("y", array), option=orjson.OPT_SERIALIZE_NUMPY)
    )
    assert encoded["datatype"] == datatype
    assert encoded["shape"] == [2, 2]
    assert (
        encoded["data"] == pytest.approx(data)
        if datatype.startswith("FP")
        else encoded["data"] == data
    )


def test_bytes_are_utf8_strings_in_and_out() -> None:
    array = decode_json_data("s", [2], "BYTES", ["héllo", "wörld"])
    assert array.dtype == object
    assert list(array) == ["héllo".encode(), "wörld".encode()]
    assert encode_json_output("s", array)["data"] == ["héllo", "wörld"]


def test_nested_data_is_flattened_in_row_major_order() -> None:
    array = decode_json_data("x", [2, 3], "INT32", [[1, 2, 3], [4, 5, 6]])
    assert array.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_empty_tensor_of_any_datatype_is_accepted() -> None:
    assert decode_json_data("x", [0, 64], "INT64", []).shape == (0, 64)


def test_a_scalar_may_be_sent_without_a_list() -> None:
    assert decode_json_data("x", [1], "FP32", 2.5).tolist() == [2.5]


@pytest.mark.parametrize(
    ("shape", "datatype", "data", "message"),
    [
        ([3], "FP32", [1.0, 2.0], "needs 3 values but 'data' has 2"),
        ([2], "INT32", [1.5, 2.0], "must be integers"),
        ([2], "FP32", ["a", "b"], "must be numbers"),
        ([2], "FP32", [1.0, None], "must be numbers"),
        ([2], "UINT8", [1, 300], "must lie in [0, 255]"),
        ([2], "INT8", [-129, 0], "must lie in [-128, 127]"),
        ([2], "BOOL", [1, 0], "true/false"),
        ([2], "BYTES", ["a", 3], "must be strings"),
        ([2], "FP32", {"a": 1}, "must be a list"),
        ([10**12, 64], "FP32", [1.0], "needs 64000000000000 values"),
        ([2, 2], "FP32", [[1.0, 2.0], [3.0, 4.0], [5.0]], "needs 4 values"),
    ],
)
def test_malformed_data_is_a_clear_invalid_input(shape, datatype, data, message) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_json_data("x", shape, datatype, data)
    assert message in str(caught.value)
    assert "'x'" in str(caught.value)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("x", "must be an object"),
        ({"shape": [1], "datatype": "FP32"}, "no 'name'"),
        ({"name": "x", "datatype": "FP32"}, "no 'shape'"),
        ({"name": "x", "shape": [1]}, "no 'datatype'"),
        ({"name": "x", "shape": [1], "datatype": "FLOAT"}, "unknown datatype 'FLOAT'"),
        ({"name": "x", "shape": [1.5], "datatype": "FP32"}, "non-negative integers"),
        ({"name": "x", "shape": [-1], "datatype": "FP32"}, "non-negative integers"),
        ({"name": "x", "shape": [True], "datatype": "FP32"}, "non-negative integers"),
        ({"name": "x", "shape": "3", "datatype": "FP32"}, "non-negative integers"),
    ],
)
def test_malformed_tensor_headers_are_rejected(entry, message) -> None:
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace("[", r"\[")):
        tensor_header(entry, 0)


def test_invalid_json_says_where_it_broke() -> None:
    with pytest.raises(InvalidInput, match="not valid JSON"):
        loads(b'{"inputs": [}')
    with pytest.raises(InvalidInput, match="empty"):
        loads(b"")


def test_fp16_outputs_travel_as_json_numbers() -> None:
    encoded = encode_json_output("h", np.array([0.5, 1.5], dtype=np.float16))
    assert orjson.loads(orjson.dumps(encoded, option=orjson.OPT_SERIALIZE_NUMPY))["data"] == [
        0.5,
        1.5,
    ]


def test_text_in_numeric_data_is_named_in_plain_words_not_as_a_numpy_repr():
    with pytest.raises(InvalidInput) as caught:
        decode_json_data("x", [2], "FP32", ["a", "b"])
    assert str(caught.value) == "input 'x': FP32 data must be numbers, found text 'a'"
