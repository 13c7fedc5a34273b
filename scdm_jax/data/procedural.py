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

The last class, "unlabeled", never appears in clean maps; the noisy-label benchmark writes it.
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
             split: str = "train") -> dict[str, np.ndarray]:
  """Generates one example.

  Returns:
    dict(image=(H, W, 3) uint8, label=(H, W) uint8 class ids, instance=(H, W) int32).
  """
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

  return {"image": _render(label, yy, xx, rng), "label": label, "instance": inst}


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
