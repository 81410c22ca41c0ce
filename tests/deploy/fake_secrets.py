"""A local stand-in for AWS Secrets Manager: GetSecretValue of its JSON API, on loopback.

Point boto3 at it with AWS_ENDPOINT_URL_SECRETS_MANAGER (or AWS_ENDPOINT_URL). A module of its
own, with a name no other test file has, so test modules import it directly.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar


class FakeSecretsManager(BaseHTTPRequestHandler):
    """GetSecretValue of the Secrets Manager JSON API, answering `secrets[SecretId]`."""

    secrets: ClassVar[dict[str, str]] = {}

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.headers["X-Amz-Target"] == "secretsmanager.GetSecretValue"
        reply = json.dumps({"ARN": body["SecretId"], "Name": "keys",
                            "SecretString": self.secrets[body["SecretId"]]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def secrets_manager() -> Iterator[str]:
    """The stand-in on a free loopback port; yields its endpoint URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeSecretsManager)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
