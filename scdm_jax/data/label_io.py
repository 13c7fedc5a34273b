"""Users' own label maps: id PNGs or RGB palette PNGs -> class ids; one-hot; colourising.

`load_label_map` is strict: ids outside the class table are refused with the file name, the
values and their pixel counts; colours are snapped to the nearest palette colour and every
colour that was not an exact palette entry is reported (with its pixel count). No image is
needed. Class id -1 in returned maps is the absorbing "unknown" state (an all-zero one-hot).
numpy + Pillow only.
"""

from __future__ import annotations

import dataclasses

from absl import logging
import numpy as np

from scdm_jax.data import layouts
from scdm_jax.data import noisy
from scdm_jax.data import palettes
from scdm_jax.io import atomic
from scdm_jax.io import fileio
from scdm_jax.io import images as image_io

UNKNOWN = -1


@dataclasses.dataclass
class LabelReport:
  """What `load_label_map` found in a file."""

  path: str
  mode: str  # "ids" | "raw-ids" | "palette"
  shape: tuple[int, int]
  class_pixels: dict[int, int]  # class id (or -1 = unknown) -> pixel count
  # Colours that were not exactly in the palette: (rgb, pixel count, snapped class, distance).
  unknown_colors: list[tuple[tuple[int, int, int], int, int, float]] = dataclasses.field(
      default_factory=list)

  @property
  def snapped_pixels(self) -> int:
    return sum(c for _, c, _, _ in self.unknown_colors)

  def summary(self, names: tuple[str, ...] | None = None, max_items: int = 10) -> str:
    lines = [f"{self.path}: {self.mode} {self.shape[0]}x{self.shape[1]}, "
             f"{len(self.class_pixels)} classes present"]
    if self.unknown_colors:
      lines.append(f"  {len(self.unknown_colors)} colours not in the palette "
                   f"({self.snapped_pixels} px) snapped to the nearest entry:")
      for rgb, count, cls, dist in self.unknown_colors[:max_items]:
        nm = names[cls] if names and 0 <= cls < len(names) else str(cls)
        lines.append(f"    rgb{rgb}: {count} px -> class {cls} ({nm}), distance {dist:.1f}")
    return "\n".join(lines)


_SNAP_CHUNK = 1 << 17  # unique colours per distance block: (chunk, K) float32


def snap_to_palette(rgb: np.ndarray, colors: np.ndarray
                    ) -> tuple[np.ndarray, list[tuple[tuple[int, int, int], int, int, float]]]:
  """Maps each pixel of an (H, W, 3) RGB array to the id of the nearest palette colour.

  Ties (palettes with repeated colours, e.g. Cityscapes) go to the lowest id. Works on the
  unique colours only, in bounded chunks, so it is cheap for real label maps and bounded in
  memory for maps with millions of colours.

  Returns:
    (ids (H, W) int32, unknown colours sorted by pixel count: (rgb, count, id, distance)).
  """
  rgb = np.asarray(rgb)[..., :3].astype(np.int64)
  flat = rgb.reshape(-1, 3)
  codes = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
  uniq, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
  ucol = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], -1)
  pal = np.asarray(colors, np.int64)
  best = np.empty(len(uniq), np.int64)
  d2_best = np.empty(len(uniq), np.int64)
  # |u - p|^2 = |u|^2 - 2 u.p + |p|^2 as a matmul, in chunks of unique colours, so memory
  # stays bounded (a random-colour 4096^2 map has ~16M unique colours). Every term is an
  # integer below 2^24, so float32 is exact and ties still go to the lowest id.
  pal_f = pal.astype(np.float32)
  pal_sq = (pal_f ** 2).sum(-1)
  for lo in range(0, len(uniq), _SNAP_CHUNK):
    u = ucol[lo:lo + _SNAP_CHUNK].astype(np.float32)
    d2 = (u ** 2).sum(-1, keepdims=True) - 2.0 * (u @ pal_f.T) + pal_sq  # (chunk, K)
    b = d2.argmin(-1)  # argmin returns the first (lowest id) on ties
    best[lo:lo + _SNAP_CHUNK] = b
    d2_best[lo:lo + _SNAP_CHUNK] = np.rint(d2[np.arange(len(b)), b]).astype(np.int64)
  dist = np.sqrt(d2_best.astype(np.float64))
  unknown = [(tuple(int(v) for v in ucol[i]), int(counts[i]), int(best[i]), float(dist[i]))
             for i in np.nonzero(dist > 0)[0]]
  unknown.sort(key=lambda u: -u[1])
  return best[inverse].reshape(rgb.shape[:2]).astype(np.int32), unknown


def _check_ids(ids: np.ndarray, num_classes: int, path: str, allow_unknown: bool) -> None:
  vals, counts = np.unique(ids, return_counts=True)
  bad = (vals >= num_classes) | (vals < (UNKNOWN if allow_unknown else 0))
  if bad.any():
    listing = ", ".join(f"{int(v)} ({int(c)} px)" for v, c in zip(vals[bad][:20], counts[bad][:20]))
    raise ValueError(
        f"{path}: label ids outside the class table 0..{num_classes - 1}: {listing}. "
        "If this is a colour-coded map, pass palette=... (a dataset name or a JSON file); if "
        "a value marks don't-care pixels (e.g. 255), pass unknown_value=that value; if the "
        "file uses a dataset's raw convention (ADE20K 0 = unlabeled), pass dataset=...")


def load_label_map(path: str, *, num_classes: int, palette: str | palettes.ClassTable | None = None,
                   dataset: str | None = None, size: int | tuple[int, int] | None = None,
                   unknown_value: int | None = None) -> tuple[np.ndarray, LabelReport]:
  """Reads a label map for sampling (no ground-truth image needed).

  Args:
    path: PNG file. Single-channel (L, P, I, I;16; grey RGB too) = ids; RGB = colours. A
      palette-indexed (P) PNG is read through its colours when `palette` is given (with a
      warning where its indices disagree), else by its indices. A JPEG is warned about.
    num_classes: the model's K; every id must lie in 0..K-1.
    palette: for RGB maps: a built-in name ("ade20k", "coco_stuff", "cityscapes",
      "celebamask_hq", "procedural"), a JSON path or a ClassTable. Defaults to `dataset`.
    dataset: if given, id PNGs are read in that dataset's *raw* convention (the one of its
      annotation files, e.g. ADE20K 0 = unlabeled -> 150, k -> k-1); otherwise ids are
      class ids.
    size: optional output size (int or (H, W)); nearest resize (Pillow's rule).
    unknown_value: a raw id value (e.g. 255) that marks don't-care pixels; they become -1
      (the absorbing all-zero one-hot).

  Returns:
    (ids (H, W) int32 in -1..K-1, LabelReport).
  """
  if not fileio.exists(path):
    raise FileNotFoundError(f"label map {path} does not exist")
  table = palette if palette is not None else dataset
  p_indices = None
  with image_io.open_image(path) as im:  # local path or gs:// URL
    mode = im.mode
    if im.format == "JPEG":
      logging.warning("%s: a JPEG file (whatever its name says): lossy compression blurs "
                      "class boundaries into colours/ids of no class; save label maps as "
                      "real PNGs.", path)
    if mode in ("RGB", "RGBA", "LA"):
      arr = np.asarray(im.convert("RGB"))
    elif mode == "P" and palette is not None:
      # A palette-indexed map with a class table: its colours are what a viewer (and its
      # author) sees, so they are snapped; the raw indices are only cross-checked.
      p_indices = np.asarray(im).astype(np.int64)
      arr = np.asarray(im.convert("RGB"))
    else:
      arr = np.asarray(im)
  is_color = arr.ndim == 3 and not ((arr[..., 0] == arr[..., 1]).all()
                                    and (arr[..., 0] == arr[..., 2]).all())
  if p_indices is not None and not is_color:
    arr = p_indices  # a grey palette: the indices are the ids
  unknown_colors = []
  if is_color:
    if table is None:
      raise ValueError(
          f"{path}: an RGB colour-coded label map, but no palette was given. Pass "
          f"palette= one of {', '.join(palettes.BUILTIN_NAMES)} or a JSON file "
          "(see docs/data.md), or save the map as a single-channel id PNG.")
    if not isinstance(table, palettes.ClassTable):
      table = palettes.get_class_table(table)
    if table.num_classes > num_classes:
      raise ValueError(f"{path}: palette {table.name!r} has {table.num_classes} classes but "
                       f"the model has num_classes={num_classes}")
    ids, unknown_colors = snap_to_palette(arr, table.colors)
    report_mode = "palette"
    if p_indices is not None:
      differ = int((p_indices != ids).sum())
      if differ:
        logging.warning("%s: a palette PNG whose indices disagree with its colours (under "
                        "palette %r) at %d of %d pixels; using the colours.", path,
                        table.name, differ, ids.size)
  else:
    raw = arr[..., 0] if arr.ndim == 3 else arr
    raw = raw.astype(np.int64)
    unk = np.zeros(raw.shape, bool) if unknown_value is None else raw == unknown_value
    if dataset is not None:
      spec = layouts.get_spec(dataset)
      ids = spec.raw_to_class(np.where(unk, 0, raw), path).astype(np.int64)
      report_mode = "raw-ids"
    else:
      ids = raw
      report_mode = "ids"
    ids = np.where(unk, UNKNOWN, ids)
    _check_ids(ids, num_classes, path, allow_unknown=True)
    ids = ids.astype(np.int32)
  if size is not None:
    ids = noisy.resize_nearest(ids, size)
  vals, counts = np.unique(ids, return_counts=True)
  report = LabelReport(path, report_mode, tuple(ids.shape),
                       {int(v): int(c) for v, c in zip(vals, counts)}, unknown_colors)
  return ids, report


def check_ids(ids: np.ndarray, num_classes: int, name: str = "<array>") -> np.ndarray:
  """`ids` as int32 after checking every id is in -1..K-1 (-1 = unknown).

  Raises:
    ValueError: naming `name` and the ids outside the class table.
  """
  ids = np.asarray(ids)
  _check_ids(ids, num_classes, name, allow_unknown=True)
  return ids.astype(np.int32)


def colorize(ids: np.ndarray, palette: str | palettes.ClassTable | np.ndarray,
             unknown_color: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
  """Class ids (..., H, W) -> uint8 RGB (..., H, W, 3); id -1 gets `unknown_color`."""
  if isinstance(palette, str):
    palette = palettes.get_class_table(palette)
  colors = palette.colors if isinstance(palette, palettes.ClassTable) else np.asarray(palette)
  ids = np.asarray(ids)
  if not np.issubdtype(ids.dtype, np.integer):
    raise TypeError(f"colorize takes integer class ids, got {ids.dtype} {ids.shape}")
  lut = np.concatenate([np.asarray(colors, np.uint8), np.asarray([unknown_color], np.uint8)])
  idx = np.where((ids >= 0) & (ids < len(colors)), ids, len(colors))
  return lut[idx]


def save_label_png(path: str, ids: np.ndarray) -> None:
  """Writes class ids as a single-channel PNG (uint8, or 16-bit when K > 256), atomically."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  ids = np.asarray(ids)
  if ids.min(initial=0) < 0:
    raise ValueError(f"{path}: cannot store id -1 (unknown) in a PNG; pick an unknown_value")
  img = Image.fromarray(ids.astype(np.uint8)) if ids.max(initial=0) < 256 else \
      Image.fromarray(ids.astype(np.uint16))
  atomic.save_image(img, path)

