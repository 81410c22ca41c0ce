"""The sampling settings every generating front door checks with one function: what each
setting takes, in whichever Python or numpy type its wire format gives it."""

from __future__ import annotations

import numpy as np
import pytest

from flaskserve.core.sampling import MAX_STOPS, InvalidSetting, sampling


def test_settings_from_any_wire_become_the_generation_request_fields() -> None:
    settings = {
        "max_tokens": np.int32(8),  # a gRPC one-element input
        "temperature": 0,
        "top_p": np.float32(0.5),
        "seed": 7,
        "stop": b"\n",  # a BYTES input
        "stream": True,  # not a sampling setting: left to the door
    }
    assert sampling(settings) == {
        "max_tokens": 8, "temperature": 0.0, "top_p": 0.5, "seed": 7, "stop": ("\n",),
    }  # fmt: skip


def test_absent_settings_keep_the_models_defaults_and_empty_stops_are_dropped() -> None:
    assert sampling({"max_tokens": None, "stop": ["", "END"]}) == {"stop": ("END",)}
    assert sampling({}) == {}


@pytest.mark.parametrize(
    ("settings", "param", "words"),
    [
        ({"max_tokens": 0}, "max_tokens", "'max_tokens' must be an integer >= 1"),
        ({"max_tokens": 3.0}, "max_tokens", "must be an integer"),
        ({"max_tokens": True}, "max_tokens", "must be an integer"),
        ({"seed": "7"}, "seed", "'seed' must be an integer"),
        ({"temperature": 2.5}, "temperature", "from 0 to 2"),
        ({"temperature": "hot"}, "temperature", "must be a number"),
        ({"top_p": 0}, "top_p", "above 0"),
        ({"top_p": 1.5}, "top_p", "from 0 to 1"),
        ({"stop": [1]}, "stop", "a string or a list"),
        ({"stop": ["a"] * (MAX_STOPS + 1)}, "stop", f"up to {MAX_STOPS}"),
    ],
)
def test_a_setting_no_generation_takes_is_refused_naming_it(
    settings: dict, param: str, words: str
) -> None:
    with pytest.raises(InvalidSetting) as caught:
        sampling(settings)
    assert caught.value.param == param
    assert caught.value.status_code == 400
    assert words in caught.value.message
