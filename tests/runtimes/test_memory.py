"""Memory a model load freed goes back to the operating system (runtimes/memory.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Frees about 100 MB of heap under a live block, which glibc keeps unless asked to trim.
HOLE_IN_THE_HEAP = """
import json
from flaskserve.runtimes.memory import release_free_memory

def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

hole = [bytes(4000) for _ in range(25_000)]
above = bytes(4000)
del hole
before = resident_mib()
released = release_free_memory()
print(json.dumps({"released": released, "before": before, "after": resident_mib()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_memory_is_returned_to_the_operating_system() -> None:
    result = subprocess.run(
        [sys.executable, "-c", HOLE_IN_THE_HEAP],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(result.stdout)
    assert report["released"] is True
    assert report["before"] - report["after"] > 50, report  # of the ~100 MB freed
