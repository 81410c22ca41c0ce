"""Running the app: process lifecycle, from the command line to a request on a thread.

- `granian`: production serving, Granian's workers, each building its own app after the fork;
- `engine`: Granian's RSGI interface to the WSGI app: bodies read on the event loop within a
  deadline, the app run in a bounded thread pool, streams passed through chunk by chunk;
- `worker`: what a worker does besides serving (signals, its exit, the last usage it holds);
- `reload`: SIGHUP rebuilds a worker's app in place and lets running requests finish;
- `grpc_door`: the gRPC server beside each app, sharing its data plane and gate;
- `access_log`: one access line per request;
- `debug`: `--debug`, Flask's reloading development server.
"""

from flaskserve.serving.debug import serve_debug
from flaskserve.serving.granian import serve_granian

__all__ = ["serve_debug", "serve_granian"]
