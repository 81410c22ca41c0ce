"""`GET /dashboard/data`: what the dashboard page (`/dashboard`) polls every few seconds.

Two parts, both read from what the server already keeps, so any worker gives the same answer:

- `models`: each model's cumulative counters summed over the workers
  (`observability.dashboard.snapshot`), which the page turns into rates;
- `usage`: what each API key used, minute by minute over the last hour, from the usage
  database (`metering`), when the server meters (`--auth` or `--usage-db`).

Who sees what. Without `--auth` the route is open, like `/metrics` and `/v2/usage` (bind to
loopback, or keep it off the public side, as docs/security.md says). With `--auth` it needs a
key: an admin key sees every model and every key's usage; any other key sees only the models
it may use (whose statistics it may read anyway) and only its own usage, never another key's.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from flask import Blueprint, Response, request

from flaskserve.core.errors import Unauthorized
from flaskserve.core.repository import ModelRepository
from flaskserve.gate import metering, policy, usage_store
from flaskserve.gate.keys import ApiKey, KeyStore
from flaskserve.observability import dashboard
from flaskserve.protocol.v2 import json_response

#: How far back the usage series reaches.
USAGE_MINUTES = 60


def usage_series(
    meter: metering.Meter, since: int, key_id: str | None = None
) -> list[dict[str, Any]]:
    """Usage per minute, key and model from `since` (Unix time) on; one key's when `key_id`."""
    meter.flush()  # this worker's last second; the others fold theirs every second
    where, parameters = "minute >= ?", [since // 60 * 60]
    if key_id is not None:
        where += " AND key_id = ?"
        parameters.append(key_id)  # type: ignore[arg-type]
    columns = ", ".join(usage_store.COLUMNS)
    with contextlib.closing(usage_store.connect(meter.db_path)) as conn:
        rows = conn.execute(
            f"SELECT minute, key_id, model, {columns} FROM usage WHERE {where} "
            "ORDER BY minute, key_id, model",
            parameters,
        ).fetchall()
    return [_usage_point(minute, key, model, counts) for minute, key, model, *counts in rows]


def _usage_point(minute: int, key: str, model: str, counts: list[int]) -> dict[str, object]:
    """One minute of one key on one model: every metered column (tokens too), compute in ms."""
    values = dict(zip(usage_store.COLUMNS, counts, strict=True))
    compute_ms = round(values.pop("compute_us") / 1000.0, 3)
    return {"minute": minute, "key": key, "model": model, **values, "compute_ms": compute_ms}


def create_blueprint(
    repository: ModelRepository, keys: KeyStore | None, meter: metering.Meter | None
) -> Blueprint:
    bp = Blueprint("dashboard", __name__)

    def viewer() -> ApiKey | None:
        """The key of this request (the gate let only valid keys through); None without keys."""
        if keys is None:
            return None
        presented = policy.presented_key(request)
        key = keys.authenticate(presented) if presented is not None else None
        if key is None:  # revoked between the gate and here
            raise Unauthorized("the API key is not valid (unknown or revoked)")
        return key

    @bp.get("/dashboard/data")
    def data() -> Response:
        key = viewer()
        served = [entry.name for entry in repository.entries()]
        own: str | None = None  # the one key whose usage this viewer sees; None: every key's
        allowed: list[str] | None = None
        if key is not None and not key.admin:
            own = key.id
            allowed = [name for name in served if key.allows(name)]
        body = dashboard.snapshot(served, allowed)
        body["viewer"] = None if key is None else {"key": key.id, "admin": key.admin}
        since = int(time.time()) - USAGE_MINUTES * 60
        body["usage"] = {
            "metered": meter is not None,
            "scope": "all" if own is None else "own",
            "since": since // 60 * 60,
            "minutes": [] if meter is None else usage_series(meter, since, own),
        }
        return json_response(body)

    return bp
