"""Fewer BLAS threads around small matrix products.

A photo search multiplies one vector by a few matrices. On a busy machine OpenBLAS's worker
threads wait to be scheduled, and a 1280 x 512 product that takes 0.2 ms on one thread takes
10 ms on two. ``blas_threads(1)`` sets NumPy's OpenBLAS to one thread for a block and restores
the previous count after it (what threadpoolctl does, for the one library NumPy bundles).
TensorFlow does not use OpenBLAS, so model inference is unaffected. Where the library or its
functions cannot be found, the block simply runs unchanged.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import logging
import os
import threading
from collections.abc import Callable, Iterator

import numpy as np

logger = logging.getLogger(__name__)

_lock = threading.Lock()
# (library file pattern, symbol prefix, symbol suffix) for NumPy's bundled OpenBLAS builds.
_CANDIDATES = (
    ("numpy.libs/libscipy_openblas64_*.so*", "scipy_openblas", "64_"),
    ("numpy.libs/libscipy_openblas*.so*", "scipy_openblas", ""),
    ("numpy.libs/libopenblas64_*.so*", "openblas", "64_"),
    ("numpy.libs/libopenblas*.so*", "openblas", ""),
    ("numpy/.dylibs/libscipy_openblas*.dylib", "scipy_openblas", "64_"),
)


@functools.lru_cache(maxsize=1)
def _api() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """OpenBLAS's get/set thread-count functions as loaded by NumPy, if they can be found."""
    site = os.path.dirname(os.path.dirname(np.__file__))
    for pattern, prefix, suffix in _CANDIDATES:
        for path in sorted(glob.glob(os.path.join(site, pattern))):
            try:
                lib = ctypes.CDLL(path)  # already loaded by NumPy: the same library state
            except OSError:
                continue
            get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                get.restype = ctypes.c_int
                set_.argtypes = [ctypes.c_int]
                return get, set_
    logger.debug("NumPy's OpenBLAS thread controls not found; BLAS threads left as they are")
    return None


def current_threads() -> int | None:
    """How many threads NumPy's OpenBLAS uses now (None when unknown)."""
    api = _api()
    return None if api is None else int(api[0]())


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Run a block with NumPy's OpenBLAS limited to ``n`` threads."""
    if n < 1:
        raise ValueError("n must be at least 1")
    api = _api()
    if api is None:
        yield
        return
    get, set_ = api
    with _lock:
        before = get()
        set_(n)
    try:
        yield
    finally:
        with _lock:
            set_(before)
