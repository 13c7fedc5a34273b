"""Per-example preprocessing (numpy + Pillow): SDM's train augmentation and test resize.

Train (spec §4.2, SDM `random_crop_arr`): draw the short side s uniformly from the integers
[ceil(S), ceil(S / 0.8)] (256..320 for S = 256); halve the image with BOX while its short
side is >= 2 s; resize it with BICUBIC so its short side is s (`round` per side); resize the
label and instance maps straight from their own size to that size with NEAREST (Pillow's
rule); take a random S x S crop; flip horizontally with p = 0.5.
Test (spec §5.1): halve with BOX while the short side is >= 2 S, then BICUBIC to S x S
(aspect ratio not kept); labels and instances NEAREST to S x S. No crop, no flip.

Label maps may have another size than the image (DS-corrupted maps are 64 x 64): they are
always resized from their own size, as the reference loader does.
"""

from __future__ import annotations

import math

import numpy as np

from scdm_jax.data import noisy

MIN_CROP_FRAC = 0.8


def _box_halve(img, target_short: int):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  while min(*img.size) >= 2 * target_short:
    img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
  return img


def preprocess(image, label: np.ndarray, instance: np.ndarray | None, *, image_size: int,
               train: bool, rng: np.random.Generator | None = None, flip: bool = True
               ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
  """Resizes/augments one example.

  Args:
    image: a PIL RGB image, a uint8 (H, W, 3) array, or None (labels only).
    label: (h, w) int class ids.
    instance: (h', w') int instance ids or None.
    image_size: S.
    train: random resized crop + flip if True, plain resize to S x S otherwise.
    rng: numpy Generator (required when train).
    flip: allow the random horizontal flip (train only).

  Returns:
    (image (S, S, 3) float32 in [-1, 1] or None, label (S, S), instance (S, S) or None).
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel
  s = int(image_size)
  if image is not None and not isinstance(image, Image.Image):
    image = Image.fromarray(np.asarray(image, np.uint8))
  if image is not None:
    image = image.convert("RGB")
    src_w, src_h = image.size
  else:
    src_h, src_w = label.shape
  if not train:
    out_img = None
    if image is not None:
      image = _box_halve(image, s).resize((s, s), resample=Image.BICUBIC)
      out_img = np.asarray(image, np.float32) / 127.5 - 1.0
    lab = noisy.resize_nearest(label, (s, s))
    inst = None if instance is None else noisy.resize_nearest(instance, (s, s))
    return out_img, lab, inst

  if rng is None:
    raise ValueError("preprocess(train=True) needs an rng")
  smaller = int(rng.integers(math.ceil(s / 1.0), math.ceil(s / MIN_CROP_FRAC) + 1))
  if image is not None:
    image = _box_halve(image, smaller)
    scale = smaller / min(*image.size)
    new_w, new_h = (round(x * scale) for x in image.size)
    image = image.resize((new_w, new_h), resample=Image.BICUBIC)
  else:
    scale = smaller / min(src_w, src_h)
    new_w, new_h = round(src_w * scale), round(src_h * scale)
  lab = noisy.resize_nearest(label, (new_h, new_w))
  inst = None if instance is None else noisy.resize_nearest(instance, (new_h, new_w))
  y0 = int(rng.integers(0, new_h - s + 1))
  x0 = int(rng.integers(0, new_w - s + 1))
  do_flip = bool(rng.random() < 0.5) and flip
  crop = (slice(y0, y0 + s), slice(x0, x0 + s))
  out_img = None
  if image is not None:
    out_img = np.asarray(image, np.float32)[crop] / 127.5 - 1.0
  lab = lab[crop]
  inst = None if inst is None else inst[crop]
  if do_flip:
    out_img = None if out_img is None else out_img[:, ::-1]
    lab = lab[:, ::-1]
    inst = None if inst is None else inst[:, ::-1]
  as_c = np.ascontiguousarray
  return (None if out_img is None else as_c(out_img), as_c(lab),
          None if inst is None else as_c(inst))


def apply_noise(label: np.ndarray, noise: str, *, unlabeled: int,
                instance: np.ndarray | None = None, rng: np.random.Generator | None = None,
                rate: float = noisy.RANDOM_RATE, radius: int = noisy.EDGE_RADIUS) -> np.ndarray:
  """Edge / Random corruption of a label map at its final size (DS acts before resizing)."""
  if noise in ("none", "ds"):
    return label
  if noise == "edge":
    return noisy.corrupt_edge(label, unlabeled, instance, radius)
  if noise == "random":
    if rng is None:
      raise ValueError("random label noise needs an rng")
    return noisy.corrupt_random(label, unlabeled, rng, rate)
  raise ValueError(f"unknown noise {noise!r}: use 'none', 'ds', 'edge' or 'random'")
