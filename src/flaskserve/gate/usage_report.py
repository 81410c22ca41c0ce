"""The usage report: the `--since` a reader asks for, and the table or CSV a bill is made from
(`flaskserve usage`, `GET /v2/usage`)."""

from __future__ import annotations

import csv
import io
import re
import time
from datetime import UTC, datetime

from flaskserve.gate.usage_store import COLUMNS, UsageRow

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: float | None = None) -> int:
    """Unix time from `30m`, `24h`, `7d` (ago) or an ISO date/time (UTC unless it says)."""
    text = text.strip()
    match = _RELATIVE.fullmatch(text)
    now = time.time() if now is None else now
    if match:
        return int(now - float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {text!r} is neither a duration (30m, 24h, 7d) nor an ISO date "
            "(2024-05-01 or 2024-05-01T12:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def format_table(rows: list[UsageRow]) -> str:
    header = (
        "KEY", "MODEL", "REQUESTS", "FAILED", "ITEMS", "BYTES_IN", "BYTES_OUT", "COMPUTE_MS",
        "PROMPT_TOKENS", "COMPLETION_TOKENS",
    )
    body = [
        (
            r.key_id, r.model, str(r.requests), str(r.failed), str(r.items), str(r.bytes_in),
            str(r.bytes_out), f"{r.compute_us / 1000.0:.3f}", str(r.prompt_tokens),
            str(r.completion_tokens),
        )
        for r in rows
    ]
    table = [header, *body]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for row in table:
        cells = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_csv(rows: list[UsageRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["key", "model", *COLUMNS[:5], "compute_ms", *COLUMNS[6:]])
    for r in rows:
        writer.writerow(
            [r.key_id, r.model, r.requests, r.failed, r.items, r.bytes_in, r.bytes_out,
             f"{r.compute_us / 1000.0:.3f}", r.prompt_tokens, r.completion_tokens]
        )
    return out.getvalue()


def since_label(since: int | None) -> str:
    if since is None:
        return "all time"
    return datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M UTC")

