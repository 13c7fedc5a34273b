"""Guides without a user: SDEdit's stroke simulator, colour sketches of label maps, box masks.

* `simulate_strokes(image)`: median filter (kernel ~ 23 * H / 256, odd, >= 3) then palette
  quantisation to a few colours (Pillow's median cut), as SDEdit builds stroke guides from
  real images (sdedit-paint-by-example.md C.3).
* `label_color_sketch(ids, image)`: every class region painted with its mean colour in
  `image` (a "semantic colour sketch").
* `box_mask(size, box)`: a 0/255 rectangle mask.
* `relabel(ids, mask, class_id)`: a label edit (the masked pixels become one class).

CLI (numpy + Pillow only):
  python -m scdm_jax.tools.strokes strokes IN.png OUT.png [--colors 6] [--kernel K]
  python -m scdm_jax.tools.strokes box-mask OUT.png --size 32 --box 8,8,24,24   # x0,y0,x1,y1
  python -m scdm_jax.tools.strokes relabel LABEL.png MASK.png OUT.png --to water --palette procedural
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image
from PIL import ImageFilter

from scdm_jax.data import label_io
from scdm_jax.data import palettes
from scdm_jax.io import images as image_io


def stroke_kernel(size: int) -> int:
  """Median-filter size for an image of height `size`: odd, ~23 * size / 256, at least 3."""
  k = max(3, int(round(23 * int(size) / 256)))
  return k if k % 2 else k + 1


def _to_uint8(image) -> tuple[np.ndarray, bool]:
  arr = np.asarray(image)
  if arr.dtype == np.uint8:
    return arr, False
  arr = np.clip(np.rint((arr.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
  return arr, True


def simulate_strokes(image, *, colors: int = 6, kernel: int | None = None) -> np.ndarray:
  """A simulated colour-stroke painting of `image` (H, W, 3).

  Args:
    image: uint8 (0..255) or float in [-1, 1]; the output has the same kind.
    colors: palette size (SDEdit uses 3, 6 or 16).
    kernel: median filter size (odd); default `stroke_kernel(H)`.
  """
  arr, was_float = _to_uint8(image)
  if arr.ndim != 3 or arr.shape[-1] != 3:
    raise ValueError(f"simulate_strokes needs an (H, W, 3) image, got shape {arr.shape}")
  k = stroke_kernel(arr.shape[0]) if kernel is None else int(kernel)
  if k < 1 or k % 2 == 0:
    raise ValueError(f"the median filter size must be odd and >= 1, got {k}")
  if not 1 <= int(colors) <= 256:
    raise ValueError(f"colors must be in 1..256, got {colors}")
  im = Image.fromarray(arr).filter(ImageFilter.MedianFilter(k))
  im = im.quantize(colors=int(colors), method=Image.Quantize.MEDIANCUT).convert("RGB")
  out = np.asarray(im, np.uint8)
  return out.astype(np.float32) / 127.5 - 1.0 if was_float else out


def label_color_sketch(ids: np.ndarray, image) -> np.ndarray:
  """Paints each class region of `ids` (H, W) with its mean colour in `image` (H, W, 3)."""
  ids = np.asarray(ids)
  img = np.asarray(image)
  if img.shape[:2] != ids.shape:
    raise ValueError(f"label map is {ids.shape[0]}x{ids.shape[1]} but the image is "
                     f"{img.shape[0]}x{img.shape[1]}")
  out = np.zeros(img.shape, np.float64)
  for c in np.unique(ids):
    sel = ids == c
    out[sel] = img[sel].astype(np.float64).mean(0)
  return np.rint(out).astype(np.uint8) if img.dtype == np.uint8 else out.astype(img.dtype)


def box_mask(size: int | tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
  """(H, W) uint8 mask, 255 inside the box [x0, x1) x [y0, y1), 0 elsewhere."""
  h, w = (size, size) if isinstance(size, int) else size
  x0, y0, x1, y1 = (int(v) for v in box)
  if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
    raise ValueError(f"box {box} (x0,y0,x1,y1) must lie inside the {h}x{w} image, x0<x1, y0<y1")
  m = np.zeros((h, w), np.uint8)
  m[y0:y1, x0:x1] = 255
  return m


def relabel(ids: np.ndarray, mask: np.ndarray, class_id: int) -> np.ndarray:
  """Class ids (H, W) with the pixels where `mask` is nonzero set to `class_id`."""
  ids, mask = np.asarray(ids), np.asarray(mask)
  if ids.shape != mask.shape[:2]:
    raise ValueError(f"label map is {ids.shape[0]}x{ids.shape[1]} but the mask is "
                     f"{mask.shape[0]}x{mask.shape[1]}")
  return np.where(mask.reshape(ids.shape) > 0, int(class_id), ids).astype(ids.dtype)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m scdm_jax.tools.strokes", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="cmd", required=True)
  s = sub.add_parser("strokes", help="simulated strokes of an image")
  s.add_argument("input")
  s.add_argument("output")
  s.add_argument("--colors", type=int, default=6)
  s.add_argument("--kernel", type=int, default=None)
  m = sub.add_parser("box-mask", help="a 0/255 rectangle mask")
  m.add_argument("output")
  m.add_argument("--size", type=int, required=True)
  m.add_argument("--box", required=True, help="x0,y0,x1,y1 (x1, y1 exclusive)")
  r = sub.add_parser("relabel", help="set the masked pixels of a label map to one class "
                     "(writes a palette-coloured label PNG)")
  r.add_argument("label")
  r.add_argument("mask")
  r.add_argument("output")
  r.add_argument("--to", required=True, help="class name or id")
  r.add_argument("--palette", default="procedural",
                 help="class table: a built-in dataset name or a JSON file")
  a = p.parse_args(argv)
  if a.cmd == "strokes":
    if not os.path.exists(a.input):
      p.error(f"{a.input} does not exist")
    with Image.open(a.input) as im:
      arr = np.asarray(im.convert("RGB"))
    image_io.save_png(a.output, simulate_strokes(arr, colors=a.colors, kernel=a.kernel))
  elif a.cmd == "relabel":
    table = palettes.get_class_table(a.palette)
    names = list(table.names)
    if a.to in names:
      cls = names.index(a.to)
    elif a.to.isdigit() and int(a.to) < table.num_classes:
      cls = int(a.to)
    else:
      p.error(f"--to {a.to!r} is not a class of {a.palette!r}: {', '.join(names)}")
    ids, _ = label_io.load_label_map(a.label, num_classes=table.num_classes, palette=table)
    new = relabel(ids, image_io.load_mask(a.mask), cls)
    image_io.save_png(a.output, label_io.colorize(new, table))
  else:
    try:
      box = tuple(int(v) for v in a.box.split(","))
      if len(box) != 4:
        raise ValueError
    except ValueError:
      p.error(f"--box must be four integers x0,y0,x1,y1, got {a.box!r}")
    mask = box_mask(a.size, box)
    folder = os.path.dirname(os.path.abspath(a.output))
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(mask).save(a.output)
  print(a.output)
  return 0


if __name__ == "__main__":
  sys.exit(main())
