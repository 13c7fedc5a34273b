"""A dependency-free progress bar for the data commands (writes to stderr)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int | None = None, desc: str = "",
             stream=None, min_interval: float = 0.2) -> Iterator[T]:
  """Yields `items`, drawing `desc [####....] i/total  rate/s  ETA` on stderr."""
  stream = stream or sys.stderr
  total = len(items) if total is None and hasattr(items, "__len__") else total
  start = last = time.monotonic()
  i = 0

  def draw(final=False):
    el = time.monotonic() - start
    rate = i / el if el > 0 else 0.0
    if total:
      frac = i / total
      bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
      eta = (total - i) / rate if rate > 0 else 0.0
      msg = f"\r{desc} [{bar}] {i}/{total}  {rate:.1f}/s  ETA {eta:.0f}s"
    else:
      msg = f"\r{desc} {i}  {rate:.1f}/s"
    stream.write(msg + ("\n" if final else ""))
    stream.flush()

  for item in items:
    yield item
    i += 1
    now = time.monotonic()
    if now - last >= min_interval:
      last = now
      draw()
  draw(final=True)
