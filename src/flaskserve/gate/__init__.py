"""The gate: everything between a request and the data plane, written once for every front door.

- `gate`: the `Gate` every transport calls: keys, model scoping, admin-only routes, rate limits,
  token quotas, admission and usage metering;
- `http_hooks` (Flask) and `grpc_guard` (gRPC): its adapters, translating a transport's request
  into the gate's calls and its refusals into the transport's status codes, nothing else;
- `policy`: reads what each route declared (`protocol.route_policy`): open, a key, a model's
  permission or an admin key;
- `keys`: the hashed keys file and constant-time lookup (`flaskserve keys add|list|revoke`);
- `limits`: per-key token buckets shared by the workers, the batch-row limit;
- `admission`: a worker's `--threads` slots, refusing (503 / UNAVAILABLE) past `--max-queue-ms`;
- `metering`, `usage_store`, `usage_report`: per-key, per-model usage journaled per request,
  folded into SQLite, and printed (`flaskserve usage`, `GET /v2/usage`);
- `steps`: the data plane's steps (deadline, usage), shared by HTTP and gRPC;
- `received`: the request bytes a metered request read;
- `streams`: the one wrapper of a streamed HTTP response, counting its bytes and holding it to
  `--max-stream-bytes` and `--max-stream-seconds` (`core.stream_limits`);
- `browser`: the guards against requests a browser was tricked into sending (Host, Origin,
  body type);
- `dashboard_data`: `/dashboard/data`, each key seeing only its own usage and models;
- `commands`: the `flaskserve keys` and `flaskserve usage` commands.

`install(app, dataplane, settings)` wires it into an app. Everything is off unless asked for
(`--auth`, `--usage-db`, `--max-batch-rows`, `--request-timeout-ms`), except overload shedding
(`--max-queue-ms`), which only acts when a request already waited for a thread, and the stream
limits, far above any generation served here. See
docs/reliability.md and docs/security.md.
"""

from flaskserve.gate.http_hooks import install

__all__ = ["install"]
