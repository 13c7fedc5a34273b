"""The one console progress bar: `desc [#####.....] i/total rate/s ETA postfix`.

Used by training (steps), sampling and editing (maps / steps) and the data commands
(`progress(iterable)`). Writes to stderr, only when `enabled` (process 0).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np

T = TypeVar("T")


class ProgressBar:
  """A one-line console progress bar.

  Draws at most every `min_interval` seconds, and only when `enabled`. On a terminal it
  redraws in place; in a log file it writes one line per draw. `postfix` is a short string
  shown after the bar (e.g. the loss).
  """

  def __init__(self, total: int, desc: str = "", *, initial: int = 0, unit: str = "it",
               enabled: bool = True, stream=None, min_interval: float = 0.5):
    self.total, self.desc, self.unit = int(total), desc, unit
    self.n = self._start_n = int(initial)
    self.enabled = enabled
    self.stream = stream or sys.stderr
    self.min_interval = min_interval
    self._t0 = self._last = time.monotonic()
    self.postfix = ""
    self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

  def update(self, n: int | None = None, *, postfix: str | None = None, force=False) -> None:
    self.n = self.n + 1 if n is None else int(n)
    if postfix is not None:
      self.postfix = postfix
    now = time.monotonic()
    if self.enabled and (force or now - self._last >= self.min_interval
                         or (self.total and self.n >= self.total)):
      self._last = now
      self._draw(now)

  def _draw(self, now: float) -> None:
    done = self.n - self._start_n
    rate = done / max(now - self._t0, 1e-9)
    if self.total:
      frac = min(1.0, self.n / self.total)
      bar = "#" * int(25 * frac) + "." * (25 - int(25 * frac))
      eta = (self.total - self.n) / rate if rate > 0 else float("nan")
      msg = (f"{self.desc} [{bar}] {self.n}/{self.total} {rate:.2f} {self.unit}/s "
             f"ETA {_fmt_secs(eta)} {self.postfix}")
    else:  # unknown total: a counter
      msg = f"{self.desc} {self.n} {rate:.2f} {self.unit}/s {self.postfix}"
    if self._tty:
      self.stream.write("\r" + msg + " " * 4)
    else:
      self.stream.write(msg + "\n")
    self.stream.flush()

  def close(self) -> None:
    if self.enabled:
      self._draw(time.monotonic())
      if self._tty:
        self.stream.write("\n")
      self.stream.flush()


def progress(items: Iterable[T], total: int | None = None, desc: str = "", stream=None,
             min_interval: float = 0.2) -> Iterator[T]:
  """Yields `items` while drawing a `ProgressBar` (total: `len(items)` when it has one)."""
  if total is None and hasattr(items, "__len__"):
    total = len(items)
  bar = ProgressBar(total or 0, desc, stream=stream, min_interval=min_interval)
  for item in items:
    yield item
    bar.update()
  bar.close()


def _fmt_secs(s: float) -> str:
  if not np.isfinite(s):
    return "?"
  s = int(s)
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else \
      f"{s // 60}:{s % 60:02d}"
