"""Paint-by-Example mask geometry: box extension, Bezier masks, the scene crop (numpy + PIL).

The recipe of PbE's `ldm/data/open-images.py` (spec B.5), in original image pixels:
1. extend the box: each side moves out by `randint(0, 0.4 * free space on that side)`;
2. the scene crop: a square of side min(H, W) containing the extended box, shrunk on every
   side by `randint(0, 0.6 * free space)` (the whole image if no square fits it);
3. the hole: with probability 0.5 the Bezier polygon (4 quadratic curves corner to corner
   of the *original* box, each middle control point the edge midpoint pushed out to the
   extended box, sampled at u = 0.05..0.90, every point jittered by +-5 px at 512 px),
   else the filled extended box.
The hole is drawn directly at the output size (after the crop and resize), so it is crisp.

Additions for users who paint small masks (Paint-by-Example#33: tiny masks produce nothing
because training masks never were that small):
- `min_mask_px`: the extended box (and the Bezier polygon's corner box) grows to at least
  this many output pixels per side (a Bezier hole still cuts up to 10% at its corners);
- `small_mask_share`: that share of examples gets a tight box hole (no extension) in the
  widest crop that brings the hole below `small_mask_frac` of the scene (the largest square
  when none does: a box over that share of the largest square cannot be made small).

All randomness comes from an explicit numpy Generator.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1), x1/y1 exclusive

BEZIER_U = np.arange(1, 19) * 0.05  # 0.05 .. 0.90: 18 samples per edge, as the code


@dataclasses.dataclass(frozen=True)
class MaskConfig:
  """Mask and crop knobs (defaults: the official recipe).

  Attributes:
    bezier_prob: share of Bezier-polygon holes (else the extended rectangle).
    extend_frac: each box side moves out by up to this share of its free space.
    jitter_px: Bezier point jitter in pixels at a 512 px output (scaled, >= 1 px).
    crop_shrink: the scene square shrinks by up to this share of its free space.
    min_mask_px: minimum hole side in output pixels (0 = off).
    small_mask_share: share of examples with a small hole (see the module docstring).
    small_mask_frac: "small" = the hole covers less than this share of the scene.
    bezier_covers_box: also hole the whole original box (the official polygon cuts its
      corners, by up to 10% of a side).
  """

  bezier_prob: float = 0.5
  extend_frac: float = 0.4
  jitter_px: float = 5.0
  crop_shrink: float = 0.6
  min_mask_px: int = 0
  small_mask_share: float = 0.0
  small_mask_frac: float = 0.05
  bezier_covers_box: bool = False

  def __post_init__(self):
    for name in ("bezier_prob", "extend_frac", "crop_shrink", "small_mask_share"):
      v = getattr(self, name)
      if not 0.0 <= v <= 1.0:
        raise ValueError(f"MaskConfig.{name}={v} must be in [0, 1]")
    if not 0.0 < self.small_mask_frac <= 1.0:
      raise ValueError(f"MaskConfig.small_mask_frac={self.small_mask_frac} must be in (0, 1]")
    if self.min_mask_px < 0 or self.jitter_px < 0:
      raise ValueError("MaskConfig.min_mask_px and jitter_px must be >= 0")


def _randint(rng: np.random.Generator, hi: float) -> int:
  """Python's random.randint(0, int(hi)): inclusive, and 0 for hi < 1."""
  return int(rng.integers(0, max(0, int(hi)) + 1))


def extend_box(box: Box, size: tuple[int, int], rng: np.random.Generator,
               frac: float = 0.4) -> tuple[int, int, int, int]:
  """Moves each side out by randint(0, frac * free space on that side)."""
  h, w = size
  x0, y0, x1, y1 = (int(v) for v in box)
  return (x0 - _randint(rng, frac * x0), y0 - _randint(rng, frac * y0),
          x1 + _randint(rng, frac * (w - x1)), y1 + _randint(rng, frac * (h - y1)))


def scene_crop(ext: Box, size: tuple[int, int], rng: np.random.Generator,
               shrink: float = 0.6) -> tuple[int, int, int, int]:
  """A random square of side min(H, W) containing `ext`, shrunk by up to `shrink` x free space.

  Returns the whole image (not square) when no such square contains `ext`, as the
  official code does.
  """
  h, w = size
  s = min(h, w)
  x0, y0, x1, y1 = (int(v) for v in ext)
  if x1 - x0 > s or y1 - y0 > s:
    return (0, 0, w, h)
  # The square's offset along the long side: it must start at or before x0 and end at or after x1.
  lo_x, hi_x = max(0, x1 - s), min(x0, w - s)
  lo_y, hi_y = max(0, y1 - s), min(y0, h - s)
  cx = int(rng.integers(lo_x, hi_x + 1))
  cy = int(rng.integers(lo_y, hi_y + 1))
  free = min(x0 - cx, y0 - cy, cx + s - x1, cy + s - y1)
  m = _randint(rng, shrink * free)
  return (cx + m, cy + m, cx + s - m, cy + s - m)


def small_crop(box: Box, size: tuple[int, int], rng: np.random.Generator, frac: float,
               out_size: int) -> tuple[int, int, int, int]:
  """A square containing `box`, so wide that the box's hole is < frac of the scene, if any.

  The hole is rounded outwards to output pixels (under 2 px more per axis): the bound
  counts that, so the drawn hole is below frac, not just the exact box.
  """
  h, w = size
  s_max = min(h, w)
  x0, y0, x1, y1 = (int(v) for v in box)
  bw, bh = x1 - x0, y1 - y0
  sides = np.arange(max(bw, bh, 1), s_max + 1)
  ok = (bw * out_size / sides + 2) * (bh * out_size / sides + 2) < frac * out_size ** 2
  if not ok.any():
    return scene_crop(box, size, rng, shrink=0.0)
  lo = int(sides[np.argmax(ok)])  # ok is monotone in the side
  s = int(rng.integers(lo, s_max + 1))
  cx = int(rng.integers(max(0, x1 - s), min(x0, w - s) + 1))
  cy = int(rng.integers(max(0, y1 - s), min(y0, h - s) + 1))
  return (cx, cy, cx + s, cy + s)


def grow_to_min(ext: Box, crop: Box, min_side: float) -> tuple[int, int, int, int]:
  """Grows `ext` symmetrically to >= min_side per side (original px), kept inside `crop`."""
  out = list(int(v) for v in ext)
  for a, b in ((0, 2), (1, 3)):
    lo, hi = int(crop[a]), int(crop[b])
    need = min(int(np.ceil(min_side)), hi - lo)
    if out[b] - out[a] < need:
      c0 = int(np.floor((out[a] + out[b] - need) / 2))
      c0 = min(max(c0, lo), hi - need)
      out[a], out[b] = c0, c0 + need
  return tuple(out)


def quad_bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, u: np.ndarray) -> np.ndarray:
  """Points of the quadratic Bezier curve p0 -> p2 with control p1 at parameters u: (n, 2)."""
  u = np.asarray(u, np.float64)[:, None]
  return (1 - u) ** 2 * p0 + 2 * u * (1 - u) * p1 + u ** 2 * p2


def bezier_points(box: Box, ext: Box) -> np.ndarray:
  """The 72 polygon points (x, y) of the official mask: top, right, bottom, left edges."""
  x0, y0, x1, y1 = (float(v) for v in box)
  e0, f0, e1, f1 = (float(v) for v in ext)
  mx, my = (x0 + x1) / 2, (y0 + y1) / 2
  edges = (((x0, y0), (mx, f0), (x1, y0)), ((x1, y0), (e1, my), (x1, y1)),
           ((x1, y1), (mx, f1), (x0, y1)), ((x0, y1), (e0, my), (x0, y0)))
  return np.concatenate([quad_bezier(np.array(a), np.array(b), np.array(c), BEZIER_U)
                         for a, b, c in edges])


def to_output(points: np.ndarray, crop: Box, out_size: int) -> np.ndarray:
  """(n, 2) original-pixel (x, y) -> output pixels of the crop resized to out_size^2."""
  cx0, cy0, cx1, cy1 = (float(v) for v in crop)
  scale = np.array([out_size / (cx1 - cx0), out_size / (cy1 - cy0)])
  return (np.asarray(points, np.float64) - np.array([cx0, cy0])) * scale


def box_to_output(box: Box, crop: Box, out_size: int) -> tuple[int, int, int, int]:
  """A box in output pixels, rounded outwards (so it covers the box) and clipped."""
  p = to_output(np.array([[box[0], box[1]], [box[2], box[3]]]), crop, out_size)
  lo = np.clip(np.floor(p[0] + 1e-6), 0, out_size).astype(int)
  hi = np.clip(np.ceil(p[1] - 1e-6), 0, out_size).astype(int)
  return (int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))


def rect_hole(box_out: Box, out_size: int) -> np.ndarray:
  hole = np.zeros((out_size, out_size), bool)
  x0, y0, x1, y1 = (int(v) for v in box_out)
  hole[y0:y1, x0:x1] = True
  return hole


def polygon_hole(points_out: np.ndarray, out_size: int) -> np.ndarray:
  """Fills the polygon (output pixel coordinates) with PIL; clipped to the image."""
  img = Image.new("L", (out_size, out_size), 0)
  ImageDraw.Draw(img).polygon([tuple(p) for p in np.asarray(points_out, float)], fill=1)
  return np.asarray(img, bool)


def jitter_px(cfg: MaskConfig, out_size: int) -> int:
  """The Bezier jitter at this output size: +-5 px at 512, at least 1 px."""
  return max(1, int(round(cfg.jitter_px * out_size / 512))) if cfg.jitter_px > 0 else 0


def make_mask(box: Box, size: tuple[int, int], out_size: int, rng: np.random.Generator,
              cfg: MaskConfig = MaskConfig()) -> dict:
  """The hole and the scene crop for one object box.

  Args:
    box: the object box (x0, y0, x1, y1) in original pixels.
    size: (H, W) of the original image.
    out_size: the scene's output side S.
    rng: the example's Generator.
    cfg: the knobs.

  Returns:
    dict(hole (S, S) bool, crop, ext: original pixels; box_out, ext_out: output pixels;
    small: bool, bezier: bool).
  """
  small = rng.random() < cfg.small_mask_share
  if small:
    ext = tuple(int(v) for v in box)
    crop = small_crop(ext, size, rng, cfg.small_mask_frac, out_size)
  else:
    ext = extend_box(box, size, rng, cfg.extend_frac)
    crop = scene_crop(ext, size, rng, cfg.crop_shrink)
  pbox = tuple(int(v) for v in box)
  if cfg.min_mask_px:  # the polygon's corner box grows too, so a Bezier hole is not tiny
    side = (crop[2] - crop[0]) * cfg.min_mask_px / out_size
    pbox = grow_to_min(pbox, crop, side)
    ext = grow_to_min(ext, crop, side)
    ext = (min(ext[0], pbox[0]), min(ext[1], pbox[1]), max(ext[2], pbox[2]),
           max(ext[3], pbox[3]))
  bezier = (not small) and rng.random() < cfg.bezier_prob
  box_out = box_to_output(box, crop, out_size)
  ext_out = box_to_output(ext, crop, out_size)
  if bezier:
    pts = to_output(bezier_points(pbox, ext), crop, out_size)
    j = jitter_px(cfg, out_size)
    pts = pts + rng.integers(-j, j + 1, size=pts.shape)
    hole = polygon_hole(pts, out_size)
    if cfg.bezier_covers_box:
      hole |= rect_hole(box_out, out_size)
  else:
    hole = rect_hole(ext_out, out_size)
  return {"hole": hole, "crop": crop, "ext": ext, "box_out": box_out, "ext_out": ext_out,
          "small": small, "bezier": bezier}
