"""Request deadlines: the 504 a client gets must point at a setting that exists."""

from __future__ import annotations

import re

from flaskserve import cli
from flaskserve.core import deadlines


def test_the_timeout_error_names_a_serve_flag_that_exists() -> None:
    message = str(deadlines.expired("waiting for its batch"))
    named = set(re.findall(r"--[a-z][a-z-]*", message))
    flags = {option for param in cli.serve.params for option in param.opts}
    assert named, f"the message names no flag: {message}"
    assert named <= flags, f"{named - flags} is not a `flaskserve serve` flag"
