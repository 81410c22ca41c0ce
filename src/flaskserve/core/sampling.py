"""A generation's sampling settings, checked once for every front door that generates.

OpenAI's chat and completions (JSON numbers), the V2 generate extension (JSON numbers, in
`parameters` or beside `text_input`) and gRPC `ModelStreamInfer` (typed `parameters`, or
one-element inputs: numpy scalars and bytes) each gather the settings a request gives into a
mapping of the names below and call `sampling`, so a setting one door refuses every door refuses,
with the same sentence.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from flaskserve.core.errors import InvalidInput

#: The most stop strings one request may give (OpenAI's limit).
MAX_STOPS = 4
#: The settings `sampling` reads, by the names every front door gives them.
SETTINGS = ("max_tokens", "temperature", "top_p", "seed", "stop")


class InvalidSetting(InvalidInput):
    """A sampling setting no generation can take; `param` names it, as OpenAI's errors do."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def sampling(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The `GenerationRequest` fields the settings in `settings` ask for (a setting that is
    absent or None keeps the model's default): `max_tokens` an integer >= 1, `seed` an integer,
    `temperature` a number from 0 to 2, `top_p` a number above 0 up to 1, `stop` a string or a
    list of up to `MAX_STOPS` strings (empty ones are dropped). Anything else raises
    `InvalidSetting` naming the setting and what it takes."""
    fields: dict[str, Any] = {}
    for key, floor in (("max_tokens", 1), ("seed", None)):
        value = _plain(settings.get(key))
        if value is None:
            continue
        if type(value) is not int or (floor is not None and value < floor):
            at_least = f" >= {floor}" if floor is not None else ""
            raise InvalidSetting(key, f"'{key}' must be an integer{at_least}")
        fields[key] = value
    for key, low, high in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        value = _plain(settings.get(key))
        if value is None:
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not low <= value <= high:
            raise InvalidSetting(key, f"'{key}' must be a number from {low:g} to {high:g}")
        fields[key] = float(value)
    if fields.get("top_p") == 0.0:
        raise InvalidSetting("top_p", "'top_p' must be above 0 (1 keeps every token)")
    stop = _plain(settings.get("stop"))
    if stop is not None:
        fields["stop"] = _stops(stop)
    return fields


def _stops(value: Any) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > MAX_STOPS:
        stops = None
    else:
        stops = [_plain(stop) for stop in stops]
    if stops is None or not all(isinstance(stop, str) for stop in stops):
        raise InvalidSetting(
            "stop", f"'stop' must be a string or a list of up to {MAX_STOPS} strings"
        )
    return tuple(stop for stop in stops if stop)


def _plain(value: Any) -> Any:
    """A wire value as Python's own type: a numpy scalar (a gRPC input) as its number, bytes (a
    BYTES input) as text."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value
