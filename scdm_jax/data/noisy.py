"""The noisy-label benchmark of SCDM (DS, Edge, Random) as vectorised, seeded numpy ops.

Spec: ../shared/docs/scdm-method.md §7. All functions take and return 2-D integer maps
(raw dataset values or class ids: the ops never look at what the values mean, except for the
`unlabeled` value they write). No TensorFlow here: the tf.data pipeline and the `corrupt`
command both call these.

- DS: nearest resize of the annotation at its original size to 64x64 (exactly Pillow's
  NEAREST, which the reference used), then nearest back up to the training size.
- Edge: pixels whose 4-neighbour differs (in the instance map, or the label map when there
  is none), dilated by an L1 ball of radius 2 (13-pixel diamond), are set to `unlabeled`.
- Random: each pixel is set to `unlabeled` with probability `rate` (0.1), from a seeded
  numpy Generator (the reference is unseeded; ours is reproducible).
"""

from __future__ import annotations

import numpy as np

DS_SIZE = 64
EDGE_RADIUS = 2
RANDOM_RATE = 0.1
VARIANTS = ("ds", "edge", "random")


def pil_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source indices Pillow's NEAREST resize picks along one axis.

  Pillow (affine transform, nearest filter) walks the output with a float64 accumulator
  starting at `scale / 2` and adding `scale = in/out` per pixel, then floors it. The
  accumulated rounding differs from `floor((x + 0.5) * scale)` exactly at integer
  boundaries, so we accumulate the same way (`np.add.accumulate` is sequential).
  """
  if in_size <= 0 or out_size <= 0:
    raise ValueError(f"sizes must be positive, got in={in_size}, out={out_size}")
  scale = in_size / out_size
  steps = np.full(out_size, scale, np.float64)
  steps[0] = scale * 0.5
  idx = np.floor(np.add.accumulate(steps)).astype(np.intp)
  return np.clip(idx, 0, in_size - 1)


def resize_nearest(x: np.ndarray, size: tuple[int, int] | int) -> np.ndarray:
  """Nearest resize of (H, W[, C]) to `size` = (height, width), identical to Pillow NEAREST."""
  h_out, w_out = (size, size) if isinstance(size, int) else size
  h, w = x.shape[:2]
  if (h, w) == (h_out, w_out):
    return x
  rows = pil_nearest_indices(h, h_out)
  cols = pil_nearest_indices(w, w_out)
  return x[rows[:, None], cols[None, :]]


def boundary_map(inst: np.ndarray) -> np.ndarray:
  """(H, W) bool: pixels whose value differs from any of their 4 neighbours.

  Both sides of a boundary are marked (2-px boundaries), and pixels outside the image do not
  count as neighbours: the SDM/SCDM `get_edges` rule (spec §1).
  """
  inst = np.asarray(inst)
  edge = np.zeros(inst.shape, bool)
  dx = inst[:, 1:] != inst[:, :-1]
  edge[:, 1:] |= dx
  edge[:, :-1] |= dx
  dy = inst[1:, :] != inst[:-1, :]
  edge[1:, :] |= dy
  edge[:-1, :] |= dy
  return edge


def dilate_l1(mask: np.ndarray, radius: int = EDGE_RADIUS) -> np.ndarray:
  """Binary dilation of a 2-D mask by the L1 ball (diamond) of `radius`, no wrap-around.

  Same as `cv2.dilate(mask, diamond)` with OpenCV's default border (outside pixels never
  switch a pixel on).
  """
  mask = np.asarray(mask, bool)
  h, w = mask.shape
  out = mask.copy()
  for dy in range(-radius, radius + 1):
    r = radius - abs(dy)
    for dx in range(-r, r + 1):
      if dy == 0 and dx == 0:
        continue
      # out[y, x] |= mask[y + dy, x + dx] where in range.
      ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
      xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
      out[yd, xd] |= mask[ys, xs]
  return out


def edge_mask(label: np.ndarray, instance: np.ndarray | None = None,
              radius: int = EDGE_RADIUS) -> np.ndarray:
  """The Edge benchmark's corrupted pixels: dilated 4-neighbour boundaries (bool (H, W))."""
  src = label if instance is None else instance
  return dilate_l1(boundary_map(src), radius)


def corrupt_ds(label: np.ndarray, out_size: tuple[int, int] | int | None = None,
               ds_size: int = DS_SIZE) -> np.ndarray:
  """DS: nearest to ds_size x ds_size from the original size, then (optionally) to out_size."""
  small = resize_nearest(label, ds_size)
  return small if out_size is None else resize_nearest(small, out_size)


def corrupt_edge(label: np.ndarray, unlabeled: int, instance: np.ndarray | None = None,
                 radius: int = EDGE_RADIUS) -> np.ndarray:
  """Edge: dilated boundaries of `instance` (or `label`) set to `unlabeled`."""
  out = np.array(label, copy=True)
  out[edge_mask(label, instance, radius)] = unlabeled
  return out


def random_mask(shape: tuple[int, ...], rng: np.random.Generator | int,
                rate: float = RANDOM_RATE) -> np.ndarray:
  """Bernoulli(rate) mask; `rng` is a numpy Generator or a seed."""
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"random corruption rate must lie in [0, 1], got {rate}")
  rng = np.random.default_rng(rng)
  return rng.random(shape) < rate


def corrupt_random(label: np.ndarray, unlabeled: int, rng: np.random.Generator | int,
                   rate: float = RANDOM_RATE) -> np.ndarray:
  """Random: each pixel set to `unlabeled` with probability `rate`."""
  out = np.array(label, copy=True)
  out[random_mask(out.shape, rng, rate)] = unlabeled
  return out



def corrupt_via_render(clean: np.ndarray, big_label: np.ndarray, variant: str, *,
                       unlabeled: int, rng: np.random.Generator,
                       big_instance: np.ndarray | None = None, rate: float = RANDOM_RATE,
                       ds_size: int = DS_SIZE, radius: int = EDGE_RADIUS) -> np.ndarray:
  """A corruption of the paper's strength for a small map `clean` (h, w).

  The same layout rendered at the paper's size (`big_label` (H, W), a multiple of (h, w),
  e.g. 256 x 256) is corrupted with the paper's settings; the big map is then point-sampled
  every H/h pixels from a random phase (one per axis and map), and the sampled changed
  pixels take the sampled corrupted value while every other pixel keeps `clean`. A random
  phase makes each big pixel equally likely to be sampled, so the share of changed pixels
  is the paper-size share in expectation, which settings applied at 32 px cannot give (the
  2-px Edge boundary alone covers 21 % of a 32 px procedural map; a fixed phase would see
  DS's 4 x 4 blocks always at the same offset).
  """
  big = np.asarray(big_label).astype(np.int64)
  (bh, bw), (h, w) = big.shape, clean.shape[:2]
  if bh % h or bw % w:
    raise ValueError(f"data.noise_render_size: the render size {bh}x{bw} must be a multiple "
                     f"of the image size {h}x{w} (e.g. 256 for 32 or 64 px)")
  fy, fx = bh // h, bw // w
  rows = int(rng.integers(0, fy)) + fy * np.arange(h)
  cols = int(rng.integers(0, fx)) + fx * np.arange(w)
  marker = -2  # neither a class id nor -1, so "set to unlabeled" stays recognisable
  if variant == "ds":
    bad = resize_nearest(resize_nearest(big, ds_size), big.shape)
  elif variant == "edge":
    bad = corrupt_edge(big, marker, big_instance, radius)
  elif variant == "random":
    bad = corrupt_random(big, marker, rng, rate)
  else:
    raise ValueError(f"unknown variant {variant!r}: use ds, edge or random")
  pick = lambda x: x[rows[:, None], cols[None, :]]
  value = pick(bad)
  value = np.where(value == marker, unlabeled, value)
  return np.where(pick(bad != big), value, clean).astype(clean.dtype)
