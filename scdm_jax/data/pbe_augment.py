"""Reference augmentations of Paint by Example (numpy/scipy; an albumentations equivalent).

PbE's reference path applies, after resizing to the encoder size: HorizontalFlip(p=0.5),
Rotate(limit=20, p=0.5), Blur(p=0.3), ElasticTransform(p=0.3) (spec B.5). Here:
- flip: left-right mirror;
- rotation: uniform angle in [-20, 20] degrees about the centre, bilinear, borders
  reflected (albumentations' default BORDER_REFLECT_101 is scipy's "mirror");
- blur: a box filter of a random odd size 3..7 (albumentations' Blur, blur_limit=7);
- elastic: a random displacement field, Gaussian-smoothed (sigma = `elastic_sigma` x size)
  and scaled to at most `elastic_alpha` x size pixels, bilinear. Our own parameterisation
  (albumentations' alpha/sigma/alpha_affine differ between its versions).

Images are float32 (H, W, C) in [0, 1]; every op keeps shape and range. Randomness comes
only from the passed numpy Generator.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Probabilities and strengths (defaults: the official recipe).

  Attributes:
    flip_prob, rotate_prob, blur_prob, elastic_prob: per-op probabilities.
    max_rotate_deg: rotation angle bound.
    blur_max: largest (odd) box-blur size; sizes 3..blur_max (< 3 = no blur).
    elastic_alpha: largest displacement as a share of the image side.
    elastic_sigma: smoothing of the displacement field as a share of the image side.
  """

  flip_prob: float = 0.5
  rotate_prob: float = 0.5
  blur_prob: float = 0.3
  elastic_prob: float = 0.3
  max_rotate_deg: float = 20.0
  blur_max: int = 7
  elastic_alpha: float = 0.04
  elastic_sigma: float = 0.08

  def __post_init__(self):
    for name in ("flip_prob", "rotate_prob", "blur_prob", "elastic_prob"):
      v = getattr(self, name)
      if not 0.0 <= v <= 1.0:
        raise ValueError(f"AugmentConfig.{name}={v} must be in [0, 1]")


NONE = AugmentConfig(0.0, 0.0, 0.0, 0.0)


def hflip(img: np.ndarray) -> np.ndarray:
  return img[:, ::-1].copy()


def rotate(img: np.ndarray, degrees: float) -> np.ndarray:
  """Rotation about the centre, same size, reflected borders, bilinear."""
  if degrees == 0:
    return img.copy()
  out = ndimage.rotate(img, degrees, axes=(1, 0), reshape=False, order=1, mode="mirror")
  return np.clip(out, 0.0, 1.0).astype(np.float32)


def box_blur(img: np.ndarray, k: int) -> np.ndarray:
  """Mean over a k x k window (per channel), reflected borders; k <= 1 is the identity."""
  if k <= 1:
    return img.copy()
  return ndimage.uniform_filter(img, size=(k, k, 1), mode="mirror").astype(np.float32)


def elastic_field(shape: tuple[int, int], rng: np.random.Generator, alpha: float,
                  sigma: float) -> tuple[np.ndarray, np.ndarray]:
  """Smooth random (dy, dx) fields with max |d| = alpha * side pixels."""
  h, w = shape
  side = min(h, w)
  out = []
  for _ in range(2):
    d = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), max(sigma * side, 1e-3),
                                mode="reflect")
    peak = np.abs(d).max()
    out.append(d * (alpha * side / peak) if peak > 0 else d)
  return out[0], out[1]


def elastic(img: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
  """Samples img at (y + dy, x + dx), bilinear, reflected borders."""
  h, w = img.shape[:2]
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  coords = [yy + dy, xx + dx]
  out = np.stack([ndimage.map_coordinates(img[..., c], coords, order=1, mode="mirror")
                  for c in range(img.shape[2])], -1)
  return np.clip(out, 0.0, 1.0).astype(np.float32)


def augment(img: np.ndarray, rng: np.random.Generator,
            cfg: AugmentConfig = AugmentConfig()) -> tuple[np.ndarray, dict[str, bool]]:
  """Applies flip, rotation, blur and elastic in that order, each at its probability.

  Args:
    img: (H, W, C) float32 in [0, 1].
    rng: the example's Generator (the only source of randomness).
    cfg: probabilities and strengths.

  Returns:
    (augmented image (H, W, C) float32 in [0, 1], which ops were applied).
  """
  img = np.asarray(img, np.float32)
  coins = rng.random(4)
  angle = rng.uniform(-cfg.max_rotate_deg, cfg.max_rotate_deg)
  k = 2 * int(rng.integers(1, max(1, (cfg.blur_max - 1) // 2) + 1)) + 1 if cfg.blur_max >= 3 else 1
  applied = {"flip": bool(coins[0] < cfg.flip_prob), "rotate": bool(coins[1] < cfg.rotate_prob),
             "blur": bool(coins[2] < cfg.blur_prob), "elastic": bool(coins[3] < cfg.elastic_prob)}
  if applied["flip"]:
    img = hflip(img)
  if applied["rotate"]:
    img = rotate(img, angle)
  if applied["blur"]:
    img = box_blur(img, k)
  if applied["elastic"]:  # drawn last: the field is the costly part
    img = elastic(img, *elastic_field(img.shape[:2], rng, cfg.elastic_alpha, cfg.elastic_sigma))
  return img, applied
