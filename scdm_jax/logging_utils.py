"""Console progress bar, image grids and PNG writing for training and sampling.

clu is used only for `metric_writers` and `periodic_actions` (in train.py); everything here
is numpy + Pillow.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from scdm_jax import atomic


class ProgressBar:
  """A one-line console progress bar: `desc [#####.....] i/total rate/s ETA`.

  Draws on stderr at most every `min_interval` seconds, and only when `enabled` (process 0).
  `postfix` is a short string shown after the bar (e.g. the loss).
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
    # Only redraw in place on a terminal; in logs write a line per update.
    self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

  def update(self, n: int | None = None, *, postfix: str | None = None, force=False) -> None:
    self.n = self.n + 1 if n is None else int(n)
    if postfix is not None:
      self.postfix = postfix
    now = time.monotonic()
    if self.enabled and (force or now - self._last >= self.min_interval
                         or self.n >= self.total):
      self._last = now
      self._draw(now)

  def _draw(self, now: float) -> None:
    done = self.n - self._start_n
    el = max(now - self._t0, 1e-9)
    rate = done / el
    frac = min(1.0, self.n / self.total) if self.total else 1.0
    bar = "#" * int(25 * frac) + "." * (25 - int(25 * frac))
    eta = (self.total - self.n) / rate if rate > 0 else float("nan")
    msg = (f"{self.desc} [{bar}] {self.n}/{self.total} {rate:.2f} {self.unit}/s "
           f"ETA {_fmt_secs(eta)} {self.postfix}")
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


def _fmt_secs(s: float) -> str:
  if not np.isfinite(s):
    return "?"
  s = int(s)
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else \
      f"{s // 60}:{s % 60:02d}"


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] float images -> uint8."""
  return np.clip(np.rint((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255
                 ).astype(np.uint8)


def make_grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
  """Tiles rows of equally sized (H, W, 3) uint8 images into one uint8 image."""
  h, w = rows[0][0].shape[:2]
  ncol = max(len(r) for r in rows)
  grid = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
  for i, row in enumerate(rows):
    for j, img in enumerate(row):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      grid[y:y + h, x:x + w] = img
  return grid


def save_png(path: str, image: np.ndarray) -> None:
  """Writes a uint8 (H, W, 3) image atomically (local path or gs:// URL)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  atomic.save_image(Image.fromarray(np.asarray(image, np.uint8)), path)
