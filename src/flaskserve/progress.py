"""Progress of long work (an `s3://` download, a conversion), so no command sits silent: a live
bar when the output is a terminal, plain lines when it is not (a log file, a container's output,
CI), where a bar's carriage returns would pile up into one unreadable line.

A leaf module with no flaskserve imports, so any layer may report progress through it.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

#: Seconds between two plain lines of the same download.
LINE_INTERVAL = 5.0


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def size(count: float) -> str:
    """Bytes as people read them: 512 B, 3.4 KiB, 12.0 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


class Transfer:
    """Bytes of a download: tqdm's bar on a terminal, else a line at the start, one every
    `interval` seconds and one at the end. `update` may be called from several threads (boto3
    downloads a large object in parallel ranges). Nothing at all when `total` is 0."""

    def __init__(
        self,
        total: int,
        description: str,
        stream: TextIO | None = None,
        interval: float = LINE_INTERVAL,
    ) -> None:
        self.total = total
        self.description = description
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.done = 0
        self._lock = threading.Lock()
        self._started = self._last = time.monotonic()
        self._bar: Any = None
        if total <= 0:
            return
        if is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024,
                file=self.stream, mininterval=0.5, dynamic_ncols=True,
            )
        else:
            self._line(f"{description}: downloading {size(total)}")

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def update(self, count: int) -> None:
        if self.total <= 0:
            return
        with self._lock:
            self.done += count
            if self._bar is not None:
                self._bar.update(count)
                return
            now = time.monotonic()
            if now - self._last < self.interval or self.done >= self.total:
                return
            self._last = now
            rate = self.done / max(now - self._started, 1e-9)
            self._line(
                f"{self.description}: {size(self.done)} of {size(self.total)} "
                f"({100 * self.done // self.total}%, {size(rate)}/s)"
            )

    def close(self, failed: bool = False) -> None:
        if self.total <= 0:
            return
        if self._bar is not None:
            self._bar.close()
            return
        seconds = time.monotonic() - self._started
        if failed:
            self._line(f"{self.description}: stopped after {size(self.done)} of {size(self.total)}")
        else:
            self._line(f"{self.description}: {size(self.done)} in {seconds:.1f} s")

    def __enter__(self) -> Transfer:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.close(failed=kind is not None)


class Steps:
    """The steps of a task that cannot count bytes (a conversion): click's bar naming the step
    on a terminal, else one line per step (`convert: [2/5] converting with skl2onnx`)."""

    def __init__(self, total: int, description: str, stream: TextIO | None = None) -> None:
        self.total = total
        self.description = description
        self.stream = stream if stream is not None else sys.stderr
        self.count = 0
        self._bar: Any = None
        if is_terminal(self.stream):
            import click

            self._bar = click.progressbar(
                length=total, label=description, file=self.stream, show_pos=True,
                item_show_func=lambda item: item,
            )
            self._bar.__enter__()

    def step(self, text: str) -> None:
        """Step `text` begins (the previous one is done)."""
        self.count += 1
        if self._bar is not None:
            self._bar.update(1 if self.count > 1 else 0, text)
            return
        self.stream.write(f"{self.description}: [{self.count}/{self.total}] {text}\n")
        self.stream.flush()

    def close(self, failed: bool = False) -> None:
        """End the bar: full when the task is done, where it stopped when it failed."""
        if self._bar is not None:
            if not failed:
                self._bar.update(self.total - self._bar.pos, "done")
            self._bar.__exit__(None, None, None)
            self._bar = None

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.close(failed=kind is not None)
