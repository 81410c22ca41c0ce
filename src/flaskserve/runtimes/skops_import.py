"""Imports `skops.io` without the array libraries scikit-learn's discovery drags in.

`skops.io` builds its list of trusted types when imported, from
`sklearn.utils.all_estimators()`, which imports every package of scikit-learn to find its
classes. Among them are the array-API adapters vendored in `sklearn.externals.array_api_compat`,
one per array library (`torch`, `cupy`, `dask`), and importing the `torch` adapter imports torch:
about 770 modules, 3 to 4 s of CPU and about 170 MiB per process, for a scikit-learn model that
never sees a tensor (measured in docs/benchmarks.md, "Memory per worker").

While `skops.io` is imported, the importing thread is refused those adapters for libraries the
process has not imported. `pkgutil.walk_packages` skips a package that fails to import, and
`all_estimators` ignores everything under `externals` anyway, so skops trusts exactly the same
types (tests/runtimes/test_imports.py compares the lists). A refused adapter is not cached as
missing: scikit-learn imports it normally later if a model is ever given that library's arrays.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Sequence
from types import ModuleType

#: The package of scikit-learn's vendored array-API adapters, one subpackage per array library.
ADAPTERS = "sklearn.externals.array_api_compat."
#: Its subpackages that belong to no array library (besides its private `_...` modules).
SHARED = frozenset({"common"})


def import_skops_io() -> ModuleType:
    """`skops.io`, imported (the first time) without torch, cupy or dask."""
    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    refuser = _RefuseUnusedAdapters(threading.get_ident())
    sys.meta_path.insert(0, refuser)
    try:
        return importlib.import_module("skops.io")
    finally:
        sys.meta_path.remove(refuser)


class _RefuseUnusedAdapters(importlib.abc.MetaPathFinder):
    """Fails the import of an adapter whose library is not loaded, in one thread only, so that
    another thread importing a library meanwhile is not affected."""

    def __init__(self, thread: int) -> None:
        self.thread = thread

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if threading.get_ident() != self.thread or not fullname.startswith(ADAPTERS):
            return None
        library = fullname[len(ADAPTERS) :]
        if "." in library or library.startswith("_") or library in SHARED or library in sys.modules:
            return None  # the package's own modules, an adapter's modules, or a library in use
        raise ModuleNotFoundError(
            f"{fullname} is not needed to load a skops file: {library} is not in use",
            name=fullname,
        )
