"""Images and masks on disk: read RGB images and 0/1 masks, write PNGs, tile grids.

numpy + Pillow only. Reading goes through `fileio` (local paths or gs:// URLs); writing
through `atomic` (a reader never sees a half-written PNG).
"""

from __future__ import annotations

import io
import os
import struct

import numpy as np

from scdm_jax.io import atomic
from scdm_jax.io import fileio


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


def open_image(path: str):
  """A loaded PIL image from a local path or URL.

  Raises:
    FileNotFoundError: naming the path.
    ValueError: (one line, naming the path) a truncated, garbage or unsupported file.
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel
  if not fileio.exists(path):
    raise FileNotFoundError(f"image {path} does not exist")
  data = fileio.read_bytes(path)
  try:
    im = Image.open(io.BytesIO(data))
    im.load()
  except (OSError, SyntaxError, ValueError, TypeError, KeyError, AttributeError, EOFError,
          struct.error, Image.DecompressionBombError) as e:
    # Pillow reports a truncated or garbage file with any of these; one line instead.
    raise ValueError(f"{path}: not a readable image ({len(data)} bytes; "
                     f"{type(e).__name__}: {e})".splitlines()[0]) from None
  return im


def load_image(path: str) -> np.ndarray:
  """An RGB(A)/grey PNG or JPEG -> (H, W, 3) float32 in [-1, 1]."""
  with open_image(path) as im:
    arr = np.asarray(im.convert("RGB"))
  return to_float_image(arr, path)


def to_float_image(image, name: str = "image") -> np.ndarray:
  """uint8 0..255 -> float32 [-1, 1]; float input must already be in [-1, 1].

  Raises:
    ValueError: a float image outside [-1, 1] or a wrong channel count.
  """
  arr = np.asarray(image)
  if arr.shape[-1:] != (3,):
    raise ValueError(f"{name}: expected RGB images (..., H, W, 3), got shape {arr.shape}")
  if arr.dtype == np.uint8:
    return arr.astype(np.float32) / 127.5 - 1.0
  arr = arr.astype(np.float32)
  lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
  if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
    raise ValueError(f"{name}: float images must be in [-1, 1], found values in "
                     f"[{lo:.3g}, {hi:.3g}]; pass uint8 arrays for 0..255 images")
  return np.clip(arr, -1.0, 1.0)


def load_mask(mask, name: str | None = None) -> np.ndarray:
  """A mask (PNG path or array) -> float32 {0, 1} of its spatial shape (1 = regenerate).

  Accepted: values within {0, 1} or within {0, 255} (bool too); a PNG may be grey, 1-bit,
  palette or RGB(A) with equal channels; arrays (..., H, W) or (..., H, W, 1).

  Raises:
    ValueError: any other values (naming the file and the values found), or colour masks.
  """
  if isinstance(mask, (str, os.PathLike)):
    path = os.fspath(mask)
    name = name or path
    if not fileio.exists(path):
      raise FileNotFoundError(f"mask {path} does not exist")
    with open_image(path) as im:
      if im.mode == "P":
        im = im.convert("RGB")
      arr = np.asarray(im)
    if arr.ndim == 3:
      if arr.shape[-1] in (2, 4):  # LA / RGBA: ignore alpha
        arr = arr[..., :-1]
      if arr.shape[-1] == 3 and not ((arr[..., 0] == arr[..., 1]).all()
                                     and (arr[..., 0] == arr[..., 2]).all()):
        raise ValueError(f"mask {name}: a colour image; masks must be black/white "
                         "(0 = keep, 255 or 1 = regenerate)")
      arr = arr[..., 0]
  else:
    name = name or "<mask array>"
    arr = np.asarray(mask)
    if arr.ndim >= 3 and arr.shape[-1] == 1:
      arr = arr[..., 0]
  if arr.dtype == bool:
    return arr.astype(np.float32)
  vals = np.unique(arr)
  if np.all(np.isin(vals, (0, 1))):
    return (arr == 1).astype(np.float32)
  if np.all(np.isin(vals, (0, 255))):
    return (arr == 255).astype(np.float32)
  shown = ", ".join(f"{v:g}" for v in vals[:12].astype(np.float64)) + \
      (f", ... ({len(vals)} distinct)" if len(vals) > 12 else "")
  raise ValueError(f"mask {name}: values must be 0/1 or 0/255 (1 or 255 = regenerate), "
                   f"found {shown}. Save the mask as a black/white PNG without "
                   "anti-aliasing (threshold it first).")


def dilate_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
  """Grows a {0, 1} mask (..., H, W) by `pixels` (Chebyshev distance: square neighbourhood)."""
  pixels = int(pixels)
  if pixels < 0:
    raise ValueError(f"mask dilation must be >= 0 pixels, got {pixels}")
  m = np.asarray(mask, np.float32)
  if pixels == 0:
    return m
  h, w = m.shape[-2:]
  pad = [(0, 0)] * (m.ndim - 2) + [(pixels, pixels)] * 2
  p = np.pad(m, pad)
  out = np.zeros_like(m)
  for dy in range(2 * pixels + 1):
    for dx in range(2 * pixels + 1):
      out = np.maximum(out, p[..., dy:dy + h, dx:dx + w])
  return out


def check_same_size(items: list[tuple[str, tuple[int, int]]]) -> None:
  """Raises a one-line ValueError unless every (name, (H, W)) has the first one's size."""
  first_name, first = items[0]
  for nm, hw in items[1:]:
    if tuple(hw) != tuple(first):
      raise ValueError(f"size mismatch: {first_name} is {first[0]}x{first[1]} (HxW) but "
                       f"{nm} is {hw[0]}x{hw[1]}; give images, masks and label maps of "
                       "the same size")
