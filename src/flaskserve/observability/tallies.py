"""The counts and times of every inference, one shared-memory table per worker, read by both
`/metrics` and the statistics extension.

Each event of an inference is one locked update of one record in this worker's `CounterTable`
(`shared_counters`), not one update per Prometheus value (each its own lock, `getpid` and mmap
write, eleven per request): a request answered, a wait in the batcher, a predict, a change of
the in-flight or queue gauges, an API key's inference. The records keep everything both readers
need (count, nanoseconds, histogram buckets, the time of the latest request), so a scrape or a
statistics request on any worker sums every worker's file, and a worker killed at any moment
loses nothing it answered: the memory-mapped file is written before the response is sent.

Records, by the first element of their key:
- ("r", model, version, protocol, status): requests answered, their latency;
- ("q", model, version): waits in the dynamic batcher;
- ("c", model, version, rows): predicts of `rows` rows (-1: no batch dimension);
- ("i", model) and ("d", model, version): the in-flight and queue-depth gauges of this worker
  (a reader sums them over live workers only);
- ("k", key id, model, status): one API key's inferences (with `--auth`): requests (COUNT),
  compute nanoseconds (NS), then items, bytes received and sent, prompt and completion tokens
  at `KEY_ITEMS` .. `KEY_COMPLETION_TOKENS` instead of latency buckets.
- ("l", model, version): loads of a model version, in `LOAD_BUCKETS`;
- ("g", model, version): generations: their time to first token in `TOKEN_BUCKETS` (COUNT and
  NS count generations that made a token), prompt and completion tokens at `GEN_PROMPT_TOKENS`
  and `GEN_COMPLETION_TOKENS`; ("t", model, version): their mean time per output token;
- ("s", model, version): whether this worker's repository serves the version ready (COUNT: 1
  or 0) and when it said so (LATEST, nanoseconds since the epoch). A reader takes, per version,
  the value a live worker set last: the worker answering a scrape records its repository first,
  so the scrape says what that worker serves, and a model only another live worker still knows
  keeps that worker's value; a worker that is gone says nothing.
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator

from flaskserve.observability.shared_counters import CounterTable, Key, Values, read_tables

#: Seconds; from half a millisecond (a tiny model over loopback) to a minute (a slow one).
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
#: Seconds a model version took to load.
LOAD_BUCKETS = (0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Time to first token and per output token: milliseconds (a GPU) to seconds (a busy CPU).
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The values of a record: count, nanoseconds, latest (ms since the epoch), then one count per
#: latency bucket (the last one +Inf). A gauge keeps its value at COUNT.
COUNT, NS, LATEST, BUCKETS = 0, 1, 2, 3
WIDTH = BUCKETS + len(LATENCY_BUCKETS) + 1
GAUGES = frozenset({"i", "d"})
#: Readiness ("s"): like a gauge, it counts only while its worker lives.
STATE = "s"
#: Where a key record ("k") keeps what it counts beyond requests and compute time.
KEY_ITEMS, KEY_BYTES_IN, KEY_BYTES_OUT, KEY_PROMPT_TOKENS, KEY_COMPLETION_TOKENS = range(
    BUCKETS, BUCKETS + 5
)
#: Where a generation record ("g") keeps its tokens: after its first-token buckets.
GEN_PROMPT_TOKENS = BUCKETS + len(TOKEN_BUCKETS) + 1
GEN_COMPLETION_TOKENS = GEN_PROMPT_TOKENS + 1
assert GEN_COMPLETION_TOKENS < WIDTH and len(LOAD_BUCKETS) <= len(LATENCY_BUCKETS)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_table: CounterTable | None = None
_table_lock = threading.Lock()


def _forget() -> None:
    """In a forked child: its tallies are its own, in a file named by its pid."""
    global _table
    _table = None


os.register_at_fork(after_in_child=_forget)


def directory() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def _get() -> CounterTable:
    """This process's table, opened on first use (in a worker, after the fork)."""
    global _table
    if _table is None:
        with _table_lock:
            if _table is None:
                table = CounterTable(WIDTH, directory())
                # A dead worker's file reopened by a new one with its pid: its counts go on,
                # but what it had in flight or queued died with it.
                _drop_live(table)
                _table = table
    return _table


# -- recording (the request path: one locked update of one record each) ---------------------


def request_started(model: str) -> None:
    (_table or _get()).change(("i", model), 1)


def request_ended(model: str) -> None:
    (_table or _get()).change(("i", model), -1)


def request_answered(model: str, version: str, protocol: str, status: str, seconds: float) -> None:
    (_table or _get()).observe(
        ("r", model, version, protocol, status),
        int(seconds * 1e9),
        BUCKETS + bisect_left(LATENCY_BUCKETS, seconds),
        time.time_ns() // 1_000_000,
    )


def queue_waited(model: str, version: str, seconds: float) -> None:
    (_table or _get()).observe(
        ("q", model, version), int(seconds * 1e9), BUCKETS + bisect_left(LATENCY_BUCKETS, seconds)
    )


def queue_changed(model: str, version: str, delta: int) -> None:
    (_table or _get()).change(("d", model, version), delta)


def predicted(model: str, version: str, rows: int, seconds: float) -> None:
    (_table or _get()).observe(
        ("c", model, version, str(rows)),
        int(seconds * 1e9),
        BUCKETS + bisect_left(LATENCY_BUCKETS, seconds),
    )


def key_used(
    key_id: str,
    model: str,
    status: int,
    items: int,
    bytes_in: int,
    bytes_out: int,
    compute_seconds: float,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
) -> None:
    """One inference of API key `key_id` on `model` (a label the repository knows, or
    "(unknown)": key ids come from the keys file, so the series stay bounded)."""
    (_table or _get()).increase(
        ("k", key_id, model, str(status)),
        (
            1, int(compute_seconds * 1e9), 0,
            items, bytes_in, bytes_out, prompt_tokens, completion_tokens,
        ),
    )


def loaded(model: str, version: str, seconds: float) -> None:
    (_table or _get()).observe(
        ("l", model, version), int(seconds * 1e9), BUCKETS + bisect_left(LOAD_BUCKETS, seconds)
    )


def generated(
    model: str,
    version: str,
    first_token: float | None,
    per_token: float | None,
    prompt_tokens: int,
    completion_tokens: int,
) -> None:
    """One generation: its tokens, and its time to first token and per output token where it
    made one token / two or more (one lock for both records)."""
    counts = [(GEN_PROMPT_TOKENS, prompt_tokens), (GEN_COMPLETION_TOKENS, completion_tokens)]
    if first_token is not None:
        bucket = BUCKETS + bisect_left(TOKEN_BUCKETS, first_token)
        counts += [(COUNT, 1), (NS, int(first_token * 1e9)), (bucket, 1)]
    changes: list[tuple[Key, list[tuple[int, int]]]] = [(("g", model, version), counts)]
    if per_token is not None:
        bucket = BUCKETS + bisect_left(TOKEN_BUCKETS, per_token)
        timing = [(COUNT, 1), (NS, int(per_token * 1e9)), (bucket, 1)]
        changes.append((("t", model, version), timing))
    (_table or _get()).update(changes)


def states(ready: dict[tuple[str, str], bool]) -> None:
    """This worker's readiness of each (model, version), as of now (one lock for them all)."""
    now = time.time_ns()
    (_table or _get()).update(
        [(("s", *key), ((COUNT, int(value)), (LATEST, now))) for key, value in ready.items()],
        assign=True,
    )


def worker_exiting() -> None:
    """A worker that stops: what it had in flight or queued, and its readiness, stop counting
    at once (not only once its pid is gone: another process may take the number)."""
    _drop_live(_table or _get())


def _drop_live(table: CounterTable) -> None:
    """Zero the gauges and readiness of `table`: they describe a worker that is no more."""
    for key, values in table.snapshot().items():
        if key[0] in GAUGES and values[COUNT]:
            table.change(key, -values[COUNT])
        elif key[0] == STATE and values[LATEST]:
            table.update([(key, ((COUNT, 0), (LATEST, 0)))], assign=True)


# -- reading ---------------------------------------------------------------------------------


def alive(pid: int | None) -> bool:
    """Whether process `pid` still runs (this process, or an unknown pid, counts as running):
    the live gauges of a worker that is gone must not count."""
    if pid is None or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process took the number
        return True
    return True


def _tables() -> Iterator[tuple[int | None, dict[Key, Values]]]:
    folder = directory()
    if folder is None:
        yield None, _get().snapshot()
        return
    _get()  # this worker's file exists even before it served anything
    yield from read_tables(folder, WIDTH)


def summed() -> dict[Key, list[int]]:
    """Every worker's records, summed: the latest time is the latest of any, and gauges count
    only workers that are alive (a killed worker's in-flight requests are not in flight); a
    readiness record is the one a live worker set last."""
    totals: dict[Key, list[int]] = {}
    for pid, table in _tables():
        live = None
        for key, values in table.items():
            kind = key[0]
            if kind in GAUGES or kind == STATE:
                if live is None:
                    live = alive(pid)
                if not live:
                    continue
            if kind == STATE:
                if values[LATEST] and values[LATEST] > totals.get(key, (0, 0, 0))[LATEST]:
                    totals[key] = list(values)
                continue
            total = totals.get(key)
            if total is None:
                totals[key] = list(values)
                continue
            for index, value in enumerate(values):
                if index == LATEST:
                    total[index] = max(total[index], value)
                else:
                    total[index] += value
    return totals
