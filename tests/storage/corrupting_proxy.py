"""A loopback HTTP proxy in front of the S3 server that damages chosen downloads on demand.

It stands in for a faulty network or disk: the S3 server keeps the right bytes and the right
ETag, and the client receives something else. SigV4 signs the Host header, which the proxy passes
through unchanged, so the server still accepts the client's signatures.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

PASS, FLIP, TRUNCATE = "pass", "flip", "truncate"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class CorruptingProxy:
    """Forwards every request; GETs of keys ending in `target` are damaged per `mode`."""

    def __init__(self, upstream: str) -> None:
        self.mode = PASS
        self.target = ""
        self.damaged = 0
        upstream_url = urlsplit(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                connection = http.client.HTTPConnection(
                    upstream_url.hostname, upstream_url.port, timeout=30
                )
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                connection.close()
                if self.command == "GET" and response.status in (200, 206):
                    payload = proxy._damage(self.path.split("?")[0], payload)
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _damage(self, path: str, payload: bytes) -> bytes:
        if self.mode == PASS or not self.target or not path.endswith(self.target) or not payload:
            return payload
        self.damaged += 1
        if self.mode == FLIP:
            middle = len(payload) // 2
            return payload[:middle] + bytes([payload[middle] ^ 0xFF]) + payload[middle + 1 :]
        return payload[: len(payload) // 2]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
