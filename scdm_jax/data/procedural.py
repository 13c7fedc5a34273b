"""A procedural landscape dataset: no download, deterministic, any size (numpy only).

Each example is a small landscape: sky above a wavy horizon, optional mountains, a ground of
grass or sand with an optional lake, and a few objects (trees, rocks, buildings). Every
class has its own base colour *and* texture (sky: vertical gradient; water: horizontal
ripples; grass/sand: fine noise of different strength; tree: blotches; rock: coarse grey
noise; building: a brick grid; mountain: shading by height), so the label-to-image mapping is
learnable and can be checked (`class_mean_colors`).

Example `index` of a split is a pure function of (seed, split, index, size): generate it
anywhere, in any order. Instance maps give every background region one id and every object
its own id (>= 1000), so the instance-edge channel and the Edge corruption work.

The last class, "unlabeled", appears in clean maps only with `unlabeled_share > 0`
(`data.procedural_unlabeled_share`): thin seams on region boundaries and a few small blobs,
like the unannotated pixels of ADE20K, so that the paper's encoding of corrupted pixels
(the unlabeled class, which both SDM and SCDM then meet in training) can be tested. The
image under them stays the rendered image, and share 0 gives today's maps bit for bit.
"""

from __future__ import annotations

import zlib

import numpy as np

from scdm_jax.data import palettes
from scdm_jax.data.palettes import ClassTable

# The class list lives with the other class tables (palettes.PROCEDURAL_CLASSES).
CLASSES = palettes.PROCEDURAL_CLASSES
SKY, MOUNTAIN, GRASS, WATER, SAND, TREE, ROCK, BUILDING, UNLABELED = range(len(CLASSES))
NUM_CLASSES = len(CLASSES)

# Default sizes of the two splits (data_config.num_examples overrides the train size).
DEFAULT_NUM_EXAMPLES = {"train": 1024, "validation": 128}


def class_table() -> ClassTable:
  return palettes.get_class_table("procedural")


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(split.encode()), int(index)])


def _smooth_curve(rng, n: int, knots: int, amp: float) -> np.ndarray:
  """A smooth random 1-D profile of length n (linear interpolation of random knots)."""
  xs = np.linspace(0, n - 1, knots)
  return np.interp(np.arange(n), xs, rng.uniform(-amp, amp, knots))


def generate(index: int, *, size: int | tuple[int, int] = 64, seed: int = 0,
             split: str = "train", unlabeled_share: float = 0.0) -> dict[str, np.ndarray]:
  """Generates one example.

  Args:
    unlabeled_share: target share of pixels of the clean map set to UNLABELED (seams and
      blobs, `unlabeled_regions`); 0 leaves every pixel labelled.
  Returns:
    dict(image=(H, W, 3) uint8, label=(H, W) uint8 class ids, instance=(H, W) int32).
  """
  if not 0.0 <= unlabeled_share < 1.0:
    raise ValueError(f"data.procedural_unlabeled_share={unlabeled_share}: use a share in "
                     "[0, 1) (e.g. 0.08, about ADE20K's; 0 = every pixel labelled)")
  h, w = (size, size) if isinstance(size, int) else size
  rng = _rng(seed, split, index)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  label = np.full((h, w), SKY, np.uint8)
  inst = np.zeros((h, w), np.int32)

  # Horizon: a wavy line between 30% and 65% of the height.
  horizon = h * rng.uniform(0.3, 0.65) + _smooth_curve(rng, w, 5, 0.06 * h)
  ground = GRASS if rng.random() < 0.65 else SAND
  below = yy >= horizon[None, :]
  label[below] = ground
  inst[below] = 1

  # Mountains: a ridge above the horizon on part of the width.
  if rng.random() < 0.6:
    ridge = horizon - np.abs(_smooth_curve(rng, w, 7, 0.3 * h)) - 0.05 * h
    m = (yy >= ridge[None, :]) & ~below
    label[m] = MOUNTAIN
    inst[m] = 2

  # A lake: an ellipse below the horizon.
  if rng.random() < 0.5:
    cy = rng.uniform(horizon.mean() + 0.1 * h, h)
    cx, ry, rx = rng.uniform(0, w), rng.uniform(0.08, 0.2) * h, rng.uniform(0.15, 0.45) * w
    m = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1) & below
    label[m] = WATER
    inst[m] = 3

  # Objects standing on the ground.
  for k in range(int(rng.integers(1, 6))):
    kind = (TREE, ROCK, BUILDING)[int(rng.integers(0, 3))]
    cx = rng.uniform(0, w)
    base = min(h - 1.0, float(horizon[int(np.clip(cx, 0, w - 1))]) + rng.uniform(0, 0.3) * h)
    scale = rng.uniform(0.08, 0.22) * h * (0.5 + base / h)
    if kind == TREE:  # a canopy ellipse on a short trunk
      m = ((yy - (base - 1.3 * scale)) / scale) ** 2 + ((xx - cx) / (0.7 * scale)) ** 2 <= 1
      m |= (np.abs(xx - cx) <= max(1.0, 0.12 * scale)) & (yy <= base) & (yy >= base - scale)
    elif kind == ROCK:  # a flat half-ellipse
      m = (((yy - base) / (0.6 * scale)) ** 2 + ((xx - cx) / scale) ** 2 <= 1) & (yy <= base)
    else:  # a rectangle
      bw = rng.uniform(0.5, 1.0) * scale
      m = (np.abs(xx - cx) <= bw) & (yy <= base) & (yy >= base - rng.uniform(1.0, 2.5) * scale)
    label[m] = kind
    inst[m] = 1000 + k

  image = _render(label, yy, xx, rng)
  if unlabeled_share > 0:
    # Own stream: the layout and the image do not depend on the share.
    urng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(split.encode()),
                                  int(index), 0x0A11])
    seams, blobs = unlabeled_regions(label, unlabeled_share, urng)
    label = label.copy()
    label[seams | blobs] = UNLABELED
  return {"image": image, "label": label, "instance": inst}


# Share of the unlabeled pixels put on seams (the rest: blobs). ADE20K's unannotated pixels
# are mostly thin gaps between polygons, with some unannotated objects.
SEAM_FRACTION = 0.6


def unlabeled_regions(label: np.ndarray, share: float, rng: np.random.Generator,
                      seam_fraction: float = SEAM_FRACTION) -> tuple[np.ndarray, np.ndarray]:
  """(seams, blobs) bool (H, W) masks covering about `share` of the pixels together.

  Seams: 1-px runs on the class boundaries (the pixel left of / above a change), chosen as
  the top-ranked boundary pixels under a smooth random field, so they come in runs rather
  than speckle. Blobs: small discs (radius ~2-4 % of the size) anywhere, added until the
  total reaches the target (the last one may overshoot by part of a disc).
  """
  h, w = label.shape
  target = int(round(share * h * w))
  seams = np.zeros((h, w), bool)
  cand = np.zeros((h, w), bool)
  cand[:, :-1] |= label[:, 1:] != label[:, :-1]
  cand[:-1, :] |= label[1:, :] != label[:-1, :]
  n_seam = min(int(cand.sum()), int(round(seam_fraction * target)))
  if n_seam > 0:
    cs = max(2, min(h, w) // 8)
    field = rng.standard_normal((h // cs + 2, w // cs + 2))
    field = np.repeat(np.repeat(field, cs, 0), cs, 1)[:h, :w]
    field = field + 0.1 * rng.standard_normal((h, w))  # ties broken at random
    ys, xs = np.nonzero(cand)
    keep = np.argsort(-field[ys, xs], kind="stable")[:n_seam]
    seams[ys[keep], xs[keep]] = True
  blobs = np.zeros((h, w), bool)
  yy, xx = np.mgrid[0:h, 0:w]
  for _ in range(4 * max(1, target)):  # bounded; each disc adds at least one pixel
    if int((seams | blobs).sum()) >= target:
      break
    r = rng.uniform(0.02, 0.04) * min(h, w) + 0.5
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    blobs |= ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & ~seams
  return seams, blobs


def _render(label: np.ndarray, yy: np.ndarray, xx: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
  """Colours and textures per class (vectorised over the whole image)."""
  h, w = label.shape
  base = np.array([c for _, c in CLASSES], np.float32)[label]  # (H, W, 3)
  fine = rng.standard_normal((h, w)).astype(np.float32)
  # Coarse noise: low-resolution noise upsampled by repetition.
  cs = max(1, min(h, w) // 16)
  coarse = rng.standard_normal((h // cs + 1, w // cs + 1)).astype(np.float32)
  coarse = np.repeat(np.repeat(coarse, cs, 0), cs, 1)[:h, :w]
  phase = rng.uniform(0, 2 * np.pi)
  period = max(2.0, h / 24)
  shade = np.zeros((h, w), np.float32)
  shade = np.where(label == SKY, 40 * (yy / h) - 20, shade)
  shade = np.where(label == MOUNTAIN, -30 * (1 - yy / h) + 6 * coarse, shade)
  shade = np.where(label == GRASS, 14 * fine, shade)
  shade = np.where(label == WATER, 18 * np.sin(yy * 2 * np.pi / period + phase
                                               + 0.3 * np.sin(xx / period)), shade)
  shade = np.where(label == SAND, 5 * fine, shade)
  shade = np.where(label == TREE, 22 * coarse + 6 * fine, shade)
  shade = np.where(label == ROCK, 16 * coarse + 10 * fine, shade)
  brick = ((yy % max(2, h // 20)) < 1) | ((xx % max(3, h // 10)) < 1)
  shade = np.where(label == BUILDING, np.where(brick, -60.0, 4 * fine), shade)
  img = base + shade[..., None]
  return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def class_mean_colors() -> np.ndarray:
  """(K, 3) float32 base colours: per-class mean colours should be close to these."""
  return np.array([c for _, c in CLASSES], np.float32)
