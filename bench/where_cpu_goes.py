"""Where a worker's CPU goes per request, from a py-spy raw profile of it under load.

    py-spy record --gil -r 100 -d 20 -p WORKER_PID --format raw -o profile.txt
    python bench/where_cpu_goes.py profile.txt [--us-per-request 1800]

`--gil` samples only the thread holding the GIL: the Python work of the worker, engine included.
Each stack is given to the part of the server named by its innermost frame that matches a rule
below (a frame of Flask or werkzeug counts as Flask's only when no frame of ours encloses it:
`request.get_data()` in the parser is parsing). With `--us-per-request` (the worker's CPU
seconds per request, from /proc/PID/stat over the same window), shares become microseconds.
"""

from __future__ import annotations

import argparse
import collections

#: (substring of a frame, part); the innermost matching frame of a stack wins.
RULES = [
    ("gunicorn/", "engine (gunicorn: HTTP parsing, sockets, threads)"),
    ("serving/access_log.py", "access log line"),
    ("serving/", "engine (gunicorn: HTTP parsing, sockets, threads)"),
    ("granian", "engine (gunicorn: HTTP parsing, sockets, threads)"),
    ("concurrent/futures", "engine (gunicorn: HTTP parsing, sockets, threads)"),
    ("TextAccessLogger", "access log line"),
    ("logging/", "access log line"),
    ("glogging", "access log line"),
    ("observability/logs.py", "access log line"),
    ("flask/", "Flask dispatch (context, routing, hook calls, Response)"),
    ("werkzeug/", "Flask dispatch (context, routing, hook calls, Response)"),
    ("hook_chain.py", "Flask dispatch (context, routing, hook calls, Response)"),
    ("gate/browser.py", "hooks: browser guards"),
    ("gate/http_hooks.py", "hooks: service gate + meter (auth, limits, metering)"),
    ("gate/policy.py", "hooks: service gate + meter (auth, limits, metering)"),
    ("gate/gate.py", "hooks: service gate + meter (auth, limits, metering)"),
    ("gate/admission.py", "hooks: service gate + meter (auth, limits, metering)"),
    ("gate/received.py", "hooks: service gate + meter (auth, limits, metering)"),
    ("observability/requests.py", "hooks: request id, model labels"),
    ("core/context.py", "hooks: request id, model labels"),
    ("http_context.py", "hooks: request id, model labels"),
    ("parse_infer_request", "parse (orjson, checks, numpy)"),
    ("protocol/codec.py", "parse (orjson, checks, numpy)"),
    ("loads (", "parse (orjson, checks, numpy)"),
    ("encode_infer_response", "encode (orjson)"),
    ("encode_json_output", "encode (orjson)"),
    ("dumps (", "encode (orjson)"),
    ("json_response", "encode (orjson)"),
    ("core/dataplane.py", "data plane steps, signature checks"),
    ("gate/steps.py", "data plane steps, signature checks"),
    ("core/signature.py", "data plane steps, signature checks"),
    ("gate/limits.py", "data plane steps, signature checks"),
    ("core/batching.py", "batching"),
    ("core/observers.py", "batching"),
    ("runtimes/", "model (scikit-learn predict)"),
    ("sklearn/", "model (scikit-learn predict)"),
    ("core/model.py", "model (scikit-learn predict)"),
    ("observability/metrics.py", "metrics + statistics"),
    ("prometheus_client/", "metrics + statistics"),
    ("observability/statistics.py", "metrics + statistics"),
    ("observability/tallies.py", "metrics + statistics"),
    ("shared_counters.py", "metrics + statistics"),
]
FLASK = "Flask dispatch (context, routing, hook calls, Response)"


def classify(stack: str) -> str:
    part = None
    for frame in stack.split(";"):
        for substring, name in RULES:
            if substring in frame:
                if name != FLASK or part is None or part.startswith("engine"):
                    part = name
                break
    return part or "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile")
    parser.add_argument("--us-per-request", type=float)
    args = parser.parse_args()
    totals: collections.Counter[str] = collections.Counter()
    for line in open(args.profile):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack:
            totals[classify(stack)] += int(count)
    samples = sum(totals.values())
    print(f"{samples} samples")
    for part, count in totals.most_common():
        share = count / samples
        us = f"{share * args.us_per_request:7.0f} us" if args.us_per_request else ""
        print(f"{100 * share:5.1f} %  {us}  {part}")


if __name__ == "__main__":
    main()
