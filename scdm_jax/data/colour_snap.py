"""Exact nearest-palette-colour snapping that costs seconds for millions of colours.

A label map's pixels are packed into 24-bit codes (r<<16 | g<<8 | b) and only the unique
codes are snapped; the inverse index of `np.unique` maps the answer back to the pixels.
The colour cube is cut into 32^3 cells of 8^3 colours; for each cell only the palette
entries that can be nearest to some colour in it are kept (an entry whose smallest distance
to the cell exceeds another entry's largest distance to the cell never wins). Each unique
colour is then compared with its cell's few candidates, in chunks, so memory stays bounded.
Candidates are kept in id order and `argmin` takes the first minimum, so ties go to the
lowest id, exactly as a full distance table would.
"""

from __future__ import annotations

import dataclasses

import numpy as np

_SHIFT = 3  # cells of 2^3 = 8 values per channel
_CELLS = 256 >> _SHIFT
_CHUNK = 1 << 18  # unique colours per distance block
_COUNT_FROM = 1 << 21  # pixels from which counting beats sorting


@dataclasses.dataclass
class SnappedColours:
  """The colours of a map that were not exact palette entries (one row per colour)."""

  rgb: np.ndarray  # (N, 3) uint8
  counts: np.ndarray  # (N,) int64 pixel counts
  ids: np.ndarray  # (N,) int32 class each colour was snapped to
  distance: np.ndarray  # (N,) float64 Euclidean RGB distance to that class's colour

  def __len__(self) -> int:
    return len(self.counts)

  @property
  def pixels(self) -> int:
    return int(self.counts.sum())

  def top(self, n: int | None = None) -> list[tuple[tuple[int, int, int], int, int, float]]:
    """The `n` most common colours (all when None) as (rgb, count, id, distance)."""
    if n is None or n >= len(self):
      order = np.argsort(-self.counts, kind="stable")
    else:
      part = np.argpartition(-self.counts, n)[:n]
      order = part[np.argsort(-self.counts[part], kind="stable")]
    return [(tuple(int(v) for v in self.rgb[i]), int(self.counts[i]), int(self.ids[i]),
             float(self.distance[i])) for i in order]

  def __iter__(self):
    return iter(self.top())


def _axis_bounds(pal_axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per cell along one axis and per entry: the smallest and largest squared distance."""
  lo = (np.arange(_CELLS) << _SHIFT)[:, None]
  hi = lo + (1 << _SHIFT) - 1
  p = pal_axis[None, :]
  near = np.maximum(np.maximum(lo - p, p - hi), 0)
  far = np.maximum(np.abs(p - lo), np.abs(p - hi))
  return near ** 2, far ** 2


def _cell_candidates(pal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(table (cells, C) int32 of candidate ids padded with each cell's first, count (cells,))."""
  near = np.zeros((_CELLS,) * 3 + (len(pal),), np.int32)
  far = np.zeros_like(near)
  for axis in range(3):
    n, f = _axis_bounds(pal[:, axis])
    shape = [1, 1, 1, len(pal)]
    shape[axis] = _CELLS
    near += n.reshape(shape).astype(np.int32)
    far += f.reshape(shape).astype(np.int32)
  near = near.reshape(-1, len(pal))
  bound = far.reshape(-1, len(pal)).min(-1, keepdims=True)
  cand = near <= bound
  count = cand.sum(-1)
  rows, cols = np.nonzero(cand)  # row-major: ids ascending within a cell
  slot = np.arange(len(rows)) - np.repeat(np.cumsum(count) - count, count)
  table = np.repeat(cols[np.cumsum(count) - count][:, None], count.max(), 1).astype(np.int32)
  table[rows, slot] = cols
  return table, count


def _unique_codes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`np.unique(codes, return_inverse=True, return_counts=True)` for 24-bit codes.

  Large maps count into the 2^24 possible codes instead of sorting (a sort of 16M pixels
  takes seconds; the count tables are 200 MB, so small maps keep the sort).
  """
  if codes.size < _COUNT_FROM:
    return np.unique(codes, return_inverse=True, return_counts=True)
  counts = np.bincount(codes, minlength=1 << 24)
  uniq = np.flatnonzero(counts).astype(np.uint32)
  counts = counts[uniq]
  slot = np.empty(1 << 24, np.int32)
  slot[uniq] = np.arange(len(uniq), dtype=np.int32)
  return uniq, slot[codes], counts


def snap(rgb: np.ndarray, colors: np.ndarray) -> tuple[np.ndarray, SnappedColours]:
  """(H, W, 3) RGB -> ((H, W) int32 ids of the nearest palette colours, the snapped colours)."""
  rgb = np.asarray(rgb)[..., :3]
  flat = rgb.reshape(-1, 3).astype(np.uint32)
  codes = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
  del flat
  uniq, inverse, counts = _unique_codes(codes)
  del codes
  ucol = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], -1).astype(np.int32)
  pal = np.asarray(colors, np.int32).reshape(-1, 3)
  table, count = _cell_candidates(pal)
  cell = ((ucol[:, 0] >> _SHIFT) * _CELLS + (ucol[:, 1] >> _SHIFT)) * _CELLS \
      + (ucol[:, 2] >> _SHIFT)
  # Colours are grouped by how many candidates their cell has (rounded up to a power of
  # two), so a few crowded cells do not make every colour pay for their width.
  width = np.maximum(1, 1 << np.ceil(np.log2(np.maximum(count, 1))).astype(np.int64))
  width = np.minimum(width, table.shape[1])
  col_width = width[cell]
  pal_channels = [np.ascontiguousarray(pal[:, c]) for c in range(3)]
  best = np.empty(len(uniq), np.int32)
  d2_best = np.empty(len(uniq), np.int32)
  for w in np.unique(col_width):
    members = np.nonzero(col_width == w)[0]
    for lo in range(0, len(members), _CHUNK):
      idx = members[lo:lo + _CHUNK]
      cand = table[cell[idx], :w]  # (n, w)
      u = ucol[idx]
      d2 = np.zeros(cand.shape, np.int32)
      for c in range(3):  # per channel: no (n, w, 3) block
        diff = pal_channels[c][cand] - u[:, c:c + 1]
        d2 += diff * diff
      if w == 1:
        best[idx], d2_best[idx] = cand[:, 0], d2[:, 0]
        continue
      j = d2.argmin(-1)[:, None]  # the first minimum = the lowest id among ties
      best[idx] = np.take_along_axis(cand, j, 1)[:, 0]
      d2_best[idx] = np.take_along_axis(d2, j, 1)[:, 0]
  off = np.nonzero(d2_best > 0)[0]
  snapped = SnappedColours(ucol[off].astype(np.uint8), counts[off].astype(np.int64),
                           best[off], np.sqrt(d2_best[off].astype(np.float64)))
  return best[inverse.reshape(-1)].reshape(rgb.shape[:2]), snapped
