"""The SageMaker container contract: `GET /ping` and `POST /invocations` on the same app.

The body of an invocation may be a V2 inference request (`{"inputs": [...]}`), a V1 request
(`{"instances": [...]}`) or CSV rows of numbers (`text/csv`). It goes to the only model served, or
to the one named by `X-Amzn-SageMaker-Target-Model` (SageMaker's multi-model header). The model
is looked up before the body is read (an unknown model is 404 whatever the body); CSV rows are
counted and checked by the data plane (signature, row limit) before any cell is converted.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, request

from flaskserve.core.dataplane import DataPlane
from flaskserve.core.declared import declare
from flaskserve.core.errors import InvalidInput
from flaskserve.core.model import Arrays, Model
from flaskserve.protocol.codec import decode_json_data, loads
from flaskserve.protocol.infer import HEADER_LENGTH
from flaskserve.protocol.route_policy import inference_route, open_route
from flaskserve.protocol.v1 import predict_arrays, predict_instances
from flaskserve.protocol.v2 import json_response, model_infer_response

TARGET_MODEL_HEADER = "X-Amzn-SageMaker-Target-Model"


def create_blueprint(dataplane: DataPlane) -> Blueprint:
    bp = Blueprint("sagemaker", __name__)
    repository = dataplane.repository

    @bp.get("/ping")
    @open_route
    def ping() -> Response:
        is_ready = bool(repository.entries()) and repository.is_ready()
        return json_response(
            {"status": "ok" if is_ready else "not ready"}, 200 if is_ready else 503
        )

    @bp.post("/invocations")
    @inference_route("sagemaker", model_in="target")
    def invocations() -> Response:
        model = dataplane.lookup(_target_model(dataplane))  # 404 or 503 whatever the body
        body = request.get_data()
        if request.mimetype == "text/csv":
            inputs = _csv_arrays(dataplane, model, _csv_text(body))
            return json_response(predict_arrays(dataplane, model, inputs))
        if request.headers.get(HEADER_LENGTH) is None:
            payload = loads(body)
            if isinstance(payload, dict) and "instances" in payload:
                return json_response(predict_instances(dataplane, model, payload["instances"]))
            if not isinstance(payload, dict) or "inputs" not in payload:
                raise InvalidInput(
                    'send {"instances": [...]} (V1), {"inputs": [...]} (V2) or text/csv rows'
                )
        return model_infer_response(dataplane, model, None)

    return bp


def _target_model(dataplane: DataPlane) -> str:
    named = request.headers.get(TARGET_MODEL_HEADER)
    if named:
        return named
    names = [entry.name for entry in dataplane.repository.entries()]
    if len(names) != 1:
        raise InvalidInput(
            f"{len(names)} models are served ({', '.join(names) or 'none'}); name one with the "
            f"{TARGET_MODEL_HEADER} header"
        )
    return names[0]


def _csv_text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("text/csv bodies must be UTF-8") from None


def _csv_arrays(dataplane: DataPlane, model: Model, text: str) -> Arrays:
    """Count the rows (and the first row's cells) without converting a cell, let the data plane
    check that shape, then convert: 200,000 lines cost a scan, not 200,000 lists of numbers."""
    if len(model.inputs) != 1:
        raise InvalidInput(
            f"model {model.name!r} has several inputs "
            f"({', '.join(s.name for s in model.inputs)}); "
            'CSV rows cannot name them: send {"instances": [{...}, ...]}'
        )
    rows, columns = 0, 0
    for line, row in _csv_lines(text):
        if not rows:  # the first row is read as the rest will be: numbers
            _numbers(row, line)
            columns = len(row)
        rows += 1
    if not rows:
        raise InvalidInput("the text/csv body needs at least one non-empty row, one per prediction")
    spec = model.inputs[0]  # the shape V1 reads from these rows, so both refuse alike
    declared = declare(spec.name, spec.datatype, [rows, columns])
    dataplane.check(model, [declared], None)
    return {spec.name: decode_json_data(spec.name, declared.shape, spec.datatype, _csv_rows(text))}


def _csv_rows(text: str) -> list[list[Any]]:
    return [_numbers(row, line) for line, row in _csv_lines(text)]


def _csv_lines(text: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of each non-empty CSV row."""
    reader = csv.reader(io.StringIO(text))
    try:
        for row in reader:
            if row:
                yield reader.line_num, row
    except csv.Error as exc:  # a NUL byte, a field past the parser's size limit, ...
        raise InvalidInput(f"CSV line {reader.line_num} cannot be read: {exc}") from None


def _numbers(row: list[str], line: int) -> list[int | float]:
    try:
        return [_number(cell) for cell in row]
    except ValueError:
        raise InvalidInput(f"CSV line {line} holds a value that is not a number") from None


def _number(cell: str) -> int | float:
    try:
        return int(cell)
    except ValueError:
        return float(cell)
