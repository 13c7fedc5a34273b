"""Hands memory that the process has freed back to the operating system (glibc only).

XLA's compiler and the eager state initialisation allocate and free gigabytes on the host;
glibc keeps the freed pages in its arenas, so a CPU run's resident memory grew by the
compiler's peak on top of the training buffers (config S of bench/bench_vs_official.py:
3.1 GB peak RSS, 2.5 GB with the pages handed back after the compile).
"""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def _malloc_trim():
  try:
    return ctypes.CDLL("libc.so.6").malloc_trim
  except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
    return None


def release_freed() -> None:
  trim = _malloc_trim()
  if trim is not None:
    trim(0)
