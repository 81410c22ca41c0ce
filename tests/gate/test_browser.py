"""Browsers cannot be turned against the server: cross-site bodies (415), foreign origins (403),
DNS rebinding (421), and pages that cannot be sniffed, framed or made to print a request's Host.

Requests go over raw `http.client` to real servers, so the headers are exactly the ones a
browser (or an attacker's page) would send: no client library adds or tidies any.
"""

from __future__ import annotations

import http.client
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from flaskserve.app import create_app
from flaskserve.gate.keys import add_key
from flaskserve.settings import Settings
from servers import Server

ROW = [0.0] * 64
V2_BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}]}
).encode()
INFER = "/v2/models/digits/infer"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
ALLOWED_ORIGIN = "https://app.example.com"


def call(
    server: Server, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request with exactly `headers` (underscores become dashes) besides Host, unless a
    Host is given, and Content-Length for a body."""
    names = {name.replace("_", "-"): value for name, value in headers.items()}
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host="Host" in names, skip_accept_encoding=True)
        for name, value in names.items():
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def error_of(body: bytes) -> str:
    return json.loads(body)["error"]


@pytest.fixture(scope="module")
def server(digits_repo: Path) -> Iterator[Server]:
    """A server with default settings: bound to 127.0.0.1, no allowed origins or hosts."""
    started = Server([str(digits_repo), "--workers", "1"])
    yield started
    started.stop()


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/plain",
        "text/plain;charset=UTF-8",
    ],
)
@pytest.mark.parametrize("path", [INFER, "/v1/models/digits:predict", "/invocations"])
def test_bodies_a_cross_site_form_can_send_are_refused_with_415(server, content_type, path):
    status, headers, body = call(server, "POST", path, V2_BODY, Content_Type=content_type)
    assert status == 415
    assert headers["Content-Type"] == "application/json"
    assert "application/json" in error_of(body)


def test_json_binary_and_csv_bodies_and_no_content_type_pass_where_a_form_body_does_not(
    server,
) -> None:
    status, _, _ = call(server, "POST", INFER, V2_BODY, Content_Type="text/plain")
    assert status == 415
    status, _, body = call(server, "POST", INFER, V2_BODY, Content_Type="application/json")
    assert status == 200, body
    # What tritonclient sends: the binary extension without any Content-Type.
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 256},
                }
            ]
        }
    ).encode()
    tensor = np.zeros((1, 64), dtype=np.float32).tobytes()
    status, headers, body = call(
        server,
        "POST",
        INFER,
        header + tensor,
        Inference_Header_Content_Length=str(len(header)),
    )
    assert status == 200, body
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, _, body = call(
        server, "POST", "/invocations", b"0," * 63 + b"0\n", Content_Type="text/csv"
    )
    assert status == 200, body
    assert len(json.loads(body)["predictions"]) == 1


def test_a_request_from_a_foreign_origin_is_refused_and_the_servers_own_passes(server) -> None:
    status, headers, body = call(
        server,
        "POST",
        INFER,
        V2_BODY,
        Content_Type="application/json",
        Origin="https://evil.example",
    )
    assert status == 403
    assert headers["Content-Type"] == "application/json"
    assert "--cors-origins" in error_of(body)
    assert "Access-Control-Allow-Origin" not in headers
    for origin in ("null", "http://[bad", "evil.example"):
        status, _, body = call(server, "GET", "/v2/models/digits", Origin=origin)
        assert status == 403, (origin, body)
    # The playground's own fetches: Origin is the address the page was loaded from.
    for origin, host in [
        (server.url, f"127.0.0.1:{server.port}"),
        (f"http://localhost:{server.port}", f"localhost:{server.port}"),
    ]:
        status, headers, body = call(
            server,
            "POST",
            INFER,
            V2_BODY,
            Host=host,
            Origin=origin,
            Content_Type="application/json",
        )
        assert status == 200, body
        assert "Access-Control-Allow-Origin" not in headers


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:5000",
        "127.0.0.1.nip.io",
        "localhost.evil.example",
        "10.0.0.1",
    ],
)
def test_a_loopback_server_refuses_other_host_names_dns_rebinding(server, host) -> None:
    for method, path, body in [("GET", "/", None), ("POST", INFER, V2_BODY)]:
        status, headers, answer = call(
            server, method, path, body, Host=host, Content_Type="application/json"
        )
        assert status == 421
        assert headers["Content-Type"] == "application/json"
        assert "--allowed-hosts" in error_of(answer)


def test_pages_carry_nosniff_and_a_csp_that_forbids_framing(server) -> None:
    for path, expected in [
        ("/", 200),
        ("/models/digits", 200),
        ("/docs", 200),
        ("/models/nope", 404),
    ]:
        status, headers, _ = call(server, "GET", path, Accept=BROWSER_ACCEPT)
        assert status == expected, path
        assert headers["Content-Type"].startswith("text/html")
        assert headers["X-Content-Type-Options"] == "nosniff"
        policy = headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
    _, headers, _ = call(server, "GET", "/assets/playground.js")
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_snippets_show_the_bound_address_never_the_requests_host(server) -> None:
    status, _, page = call(
        server, "GET", "/models/digits", Host="localhost:1234", Accept=BROWSER_ACCEPT
    )
    assert status == 200
    text = page.decode()
    assert "localhost:1234" not in text
    assert f"curl -s http://127.0.0.1:{server.port}/v2/models/digits/infer" in text


def test_allow_listed_origins_get_cors_answers_and_allowed_hosts_widen_the_names(
    digits_repo: Path,
) -> None:
    server = Server(
        [
            str(digits_repo),
            "--workers",
            "1",
            "--cors-origins",
            f"{ALLOWED_ORIGIN},http://localhost:3000",
            "--allowed-hosts",
            "evil.example",
        ]
    )
    try:
        status, headers, body = call(
            server,
            "OPTIONS",
            INFER,
            Origin=ALLOWED_ORIGIN,
            Access_Control_Request_Method="POST",
            Access_Control_Request_Headers="authorization,content-type",
        )
        assert status == 204, body
        assert headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
        assert "POST" in headers["Access-Control-Allow-Methods"]
        allowed = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
        assert allowed >= {
            "authorization",
            "content-type",
            "inference-header-content-length",
            "x-api-key",
        }
        assert int(headers["Access-Control-Max-Age"]) > 0
        assert "Origin" in headers["Vary"]

        status, headers, body = call(
            server, "POST", INFER, V2_BODY, Origin=ALLOWED_ORIGIN, Content_Type="application/json"
        )
        assert status == 200, body
        assert headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
        assert "Origin" in headers["Vary"]
        exposed = headers["Access-Control-Expose-Headers"].lower()
        assert "inference-header-content-length" in exposed and "retry-after" in exposed
        # Errors reach the page too, so it can show them.
        status, headers, _ = call(
            server,
            "POST",
            "/v2/models/nope/infer",
            V2_BODY,
            Origin="http://localhost:3000",
            Content_Type="application/json",
        )
        assert status == 404 and headers["Access-Control-Allow-Origin"] == "http://localhost:3000"

        for method in ("OPTIONS", "POST"):
            status, headers, _ = call(
                server,
                method,
                INFER,
                V2_BODY,
                Origin="https://other.example",
                Access_Control_Request_Method="POST",
                Content_Type="application/json",
            )
            assert status == 403 and "Access-Control-Allow-Origin" not in headers

        status, _, body = call(
            server, "POST", INFER, V2_BODY, Host="evil.example", Content_Type="application/json"
        )
        assert status == 200, body
        status, _, _ = call(server, "GET", "/", Host="other.example")
        assert status == 421
    finally:
        server.stop()


#: (bound address, --allowed-hosts, Host sent, answered?)
HOST_CASES = [
    ("127.0.0.1", "", "localhost:5000", True),
    ("127.0.0.1", "", "app.localhost", True),
    ("127.0.0.1", "", "127.0.0.2:80", True),
    ("127.0.0.1", "", "[::1]:5000", True),
    ("127.0.0.1", "", "LOCALHOST.", True),
    ("127.0.0.1", "", "localhost.evil.example", False),
    ("localhost", "", "example.com", False),
    ("::1", "", "[::ffff:10.0.0.1]", False),
    ("127.0.0.1", "api.example.com", "api.example.com:443", True),
    ("127.0.0.1", "api.example.com:8443", "api.example.com:443", False),
    ("127.0.0.1", "api.example.com:8443", "api.example.com:8443", True),
    ("0.0.0.0", "", "anything.example", True),
    ("0.0.0.0", "api.example.com", "anything.example", False),
    ("0.0.0.0", "api.example.com", "127.0.0.1:5000", True),
    ("127.0.0.1", "*", "anything.example", True),
]


def test_which_host_names_a_server_answers(digits_repo) -> None:
    apps = {}
    for bound, allowed, host, answered in HOST_CASES:
        if (bound, allowed) not in apps:
            settings = Settings(repository=str(digits_repo), host=bound, allowed_hosts=allowed)
            apps[bound, allowed] = create_app(settings).test_client()
        response = apps[bound, allowed].get("/v2/health/live", headers={"Host": host})
        expected = 200 if answered else 421
        assert response.status_code == expected, (bound, allowed, host)


def broken_repository(digits_repo: Path, root: Path) -> Path:
    """digits, and `broken`: a model folder without a version folder, whose load error names
    a path on the server."""
    shutil.copytree(digits_repo / "digits", root / "digits")
    (root / "broken").mkdir()
    shutil.copy(digits_repo / "digits" / "model.toml", root / "broken" / "model.toml")
    return root


def test_with_keys_open_pages_show_no_paths_of_a_model_that_failed_to_load(
    digits_repo: Path, tmp_path: Path
) -> None:
    root = broken_repository(digits_repo, tmp_path / "repo")
    keys_file = tmp_path / "keys.toml"
    admin = add_key(keys_file, "ops", admin=True)
    server = Server([str(root), "--workers", "1", "--auth", str(keys_file)])
    try:
        secret = str(root)
        for path, accept in [
            ("/", BROWSER_ACCEPT),
            ("/", "application/json"),
            ("/models/broken", BROWSER_ACCEPT),
            ("/models/nope", BROWSER_ACCEPT),
            ("/v2/models/broken/ready", "*/*"),
            ("/v1/models/broken", "*/*"),
        ]:
            status, _, body = call(server, "GET", path, Accept=accept)
            assert status in (200, 404, 503), (path, status)
            assert secret not in body.decode(), f"{path} shows {secret}"
        _, _, page = call(server, "GET", "/models/broken", Accept=BROWSER_ACCEPT)
        assert "failed to load; see the server log" in page.decode()
        # The operator still finds the reason: in the log, and in the index for admin keys.
        assert secret in server.log
        status, _, body = call(
            server,
            "POST",
            "/v2/repository/index",
            b"{}",
            Authorization=f"Bearer {admin}",
            Content_Type="application/json",
        )
        assert status == 200
        assert secret in body.decode()
    finally:
        server.stop()
