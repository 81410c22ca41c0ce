"""Serving a model as a service: API keys, usage metering, limits and overload shedding.

- `gate`: the one gate every transport calls: keys, model scoping, admin-only routes, rate
  limits, token quotas, admission and usage metering;
- `hooks` (HTTP) and `grpc_guard` (gRPC): the gate's adapters, translating a transport's request
  into the gate's calls and nothing else;
- `keys`: the hashed keys file and constant-time lookup (`flaskserve keys add|list|revoke`);
- `policy`: reads what each route declared (`protocol.route_policy`): open, a key, a model's
  permission or an admin key;
- `limits`: per-key token buckets shared by the workers, the batch-row limit;
- `metering`: per-key, per-model usage journaled per request and folded into SQLite;
- `prometheus`: the same usage as counters labelled by key id;
- `worker`: what a worker does besides serving HTTP (reload on SIGHUP, stop gRPC, last usage);
- `reload`: SIGHUP reloads a worker's app in place (models, keys, repository read again);
- `steps`: the data plane's steps (batch-row limit, deadline, usage), shared by HTTP and gRPC;
- `hooks.install(app, dataplane, settings)` wires all of it into an app.

Everything is off unless asked for (`--auth`, `--usage-db`, `--max-batch-rows`,
`--request-timeout-ms`), except overload shedding (`--max-queue-ms`), which only acts when a
request already waited seconds for a thread. See docs/reliability.md.
"""

from flaskserve.gate.http_hooks import install

__all__ = ["install"]
