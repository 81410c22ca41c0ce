"""Control characters a client sends (in a path, a model name, a header) never reach a log raw:
ESC starts a terminal escape sequence, BEL rings, CSI (U+009B) does both jobs in one character,
and a line break would forge a log line."""

from __future__ import annotations

import json
import logging
import socket

import pytest

from flaskserve.observability.logs import JsonFormatter, TextFormatter, escape, escape_quoted

#: ESC [31m (red), BEL, and CSI 2J (clear the screen), percent-encoded in a path.
INJECTED_PATH = "/v2/models/x%1B%5B31mred%07%C2%9B2J/infer"
RAW_CONTROLS = ("\x1b", "\x07", "\x9b")


def test_escape_returns_plain_text_as_it_is_and_writes_controls_as_hex() -> None:
    plain = "/v2/models/digits/infer"
    assert escape(plain) is plain
    assert escape("a\x1b[31mb\x07\x9b\n\x7f") == "a\\x1b[31mb\\x07\\x9b\\x0a\\x7f"
    assert escape("café ✓") == "café ✓"
    assert escape_quoted('x" 200 0 1ms') == "x\\x22 200 0 1ms"


@pytest.mark.parametrize("formatter", [TextFormatter("%(message)s"), JsonFormatter()])
def test_formatters_escape_every_message_that_quotes_client_input(formatter) -> None:
    record = logging.LogRecord("flaskserve", logging.ERROR, __file__, 1, "model %s failed",
                               ("x\x1b[2J\nforged line\x9b",), None)
    line = formatter.format(record)
    assert not any(char in line for char in (*RAW_CONTROLS, "\n"))
    message = json.loads(line)["message"] if line.startswith("{") else line
    assert message == "model x\\x1b[2J\\x0aforged line\\x9b failed"


def _send(port: int, path: str) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            "Content-Length: 2\r\nConnection: close\r\n\r\n{}".encode()
        )
        while client.recv(65536):
            pass


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_path_full_of_terminal_escapes_is_logged_escaped(
    start_server, digits_repo, log_format: str
) -> None:
    server = start_server([str(digits_repo), "--workers", "1", "--log-format", log_format])
    _send(server.port, INJECTED_PATH)
    # In JSON a backslash is written doubled. (The WSGI path holds the URL's bytes as latin-1,
    # so U+009B's UTF-8 bytes show as "Â\\x9b".)
    backslash = "\\\\" if log_format == "json" else "\\"
    server.wait_for_log(f"x{backslash}x1b[31mred{backslash}x07")
    assert f"{backslash}x9b2J" in server.log
    assert not any(char in server.log for char in RAW_CONTROLS), server.log
