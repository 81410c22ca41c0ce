"""One Settings object: CLI flag > environment `FLASKSERVE_*` > the defaults written here.

Every knob the server reads is a field below with its default and its environment variable, so
there is one place to look them up (as sagemaker-inference-toolkit keeps its `Environment`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "FLASKSERVE_"


@dataclass(frozen=True)
class Settings:
    #: Model repository folder; None serves the embedded default models.
    repository: str | None = None
    host: str = "127.0.0.1"
    port: int = 5000
    #: Port of the V2 gRPC front door (`inference.GRPCInferenceService`) on `host`; 0: off.
    grpc_port: int = 0
    #: Worker processes (Granian workers); 0 means one per CPU core.
    workers: int = 0
    #: Inference requests a worker runs at once (its admission slots, `gate.admission`);
    #: the app's thread pool has `engine.SPARE_THREADS` more for cheap routes.
    threads: int = 16
    #: CPU threads each model runtime (ONNX Runtime, PyTorch) uses in a worker when its
    #: model.toml does not say; 0: all cores for each ONNX Runtime session (not spinning), the
    #: cores divided among the workers for PyTorch (runtimes/threads.py).
    runtime_threads: int = 0
    debug: bool = False
    log_level: str = "info"
    #: "text" (one readable access line per request) or "json" (one JSON object per line).
    log_format: str = "text"
    #: Largest request body accepted, in bytes (413 beyond it).
    max_request_bytes: int = 64 * 1024 * 1024
    #: Milliseconds a client has to send a request's headers; the connection is closed after
    #: (read by the engine, in Rust: a slow client holds no Python thread meanwhile).
    header_timeout_ms: int = 5000
    #: Seconds given to in-flight requests after SIGTERM (a worker still busy after them is
    #: killed), and to the requests of an app a SIGHUP reload replaced before it is unloaded.
    graceful_timeout: int = 30
    #: Where built artefacts such as the embedded default models are cached.
    cache_dir: str = str(Path.home() / ".cache" / "flaskserve")
    #: Folder shared by the workers of one server (set by the CLI before forking); None for a
    #: single process.
    state_dir: str | None = None
    #: API keys file (`flaskserve keys add`); None serves without keys. See flaskserve.gate.
    auth: str | None = None
    #: SQLite file usage is metered into; default with `auth`: usage.sqlite3 beside the keys.
    usage_db: str | None = None
    #: Most rows (first dimension) one request may send per input (413 beyond, checked before
    #: the payload is decoded); a model's `max_request_rows` replaces it; 0: no limit.
    max_batch_rows: int = 4096
    #: Milliseconds a request may wait (for a thread, for its batch) before 504; 0: no limit.
    request_timeout_ms: int = 0
    #: An inference request that waited longer than this for one of its worker's `threads`
    #: slots gets 503 + Retry-After at once (overload shedding); 0 turns shedding off.
    max_queue_ms: int = 2000
    #: Whether `POST /v2/repository/models/<m>/load|unload` may change what is served. Off by
    #: default, as Triton's `--model-control-mode=none`; with `auth`, admin keys may always.
    model_control: bool = False
    #: Origins (comma-separated, e.g. `https://app.example.com`) whose browser pages may call
    #: the API; any other `Origin` is refused. Empty: only the server's own pages.
    cors_origins: str = ""
    #: Host names (comma-separated) a server bound to a loopback address also answers to;
    #: without them it answers only loopback names and addresses (DNS-rebinding guard).
    allowed_hosts: str = ""
    #: The URL clients reach this server at (e.g. behind a load balancer), used in the code
    #: snippets of the pages; None: snippets use relative paths and the bound address.
    public_url: str | None = None
    #: Milliseconds a client has to send a request's body, counted from its headers; 408 and
    #: the connection closed after (read on the event loop: a slow body holds no thread).
    body_timeout_ms: int = 10000
    #: Most bytes one streamed response may send (a generation's SSE, an app's own stream);
    #: the stream is stopped with an error event beyond it. 0: no limit. See
    #: `core.stream_limits`: a worker's memory held by clients that read nothing is at most
    #: `threads` x this.
    max_stream_bytes: int = 8 * 1024 * 1024
    #: Longest one stream may run, in seconds (HTTP and gRPC); stopped as above. 0: no limit.
    max_stream_seconds: int = 600

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then `FLASKSERVE_<FIELD>` variables, then explicit non-None overrides."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = environ.get(ENV_PREFIX + field.name.upper())
            if raw is not None:
                values[field.name] = _convert(field.name, field.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def as_environ(self) -> dict[str, str]:
        """The `FLASKSERVE_*` variables that reproduce these settings in another process."""
        return {
            ENV_PREFIX + field.name.upper(): str(getattr(self, field.name))
            for field in fields(self)
            if getattr(self, field.name) is not None
        }

    @property
    def worker_count(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)


def _convert(name: str, annotation: Any, raw: str) -> Any:
    kind = str(annotation)
    try:
        if kind == "int":
            return int(raw)
        if kind == "bool":
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
