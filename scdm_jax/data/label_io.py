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

from scdm_jax.data import colour_snap
from scdm_jax.data import layouts
from scdm_jax.data import noisy
from scdm_jax.data import palettes
from scdm_jax.io import atomic
from scdm_jax.io import fileio
from scdm_jax.io import images as image_io

UNKNOWN = -1


def _no_snaps() -> colour_snap.SnappedColours:
  return colour_snap.SnappedColours(np.zeros((0, 3), np.uint8), np.zeros(0, np.int64),
                                    np.zeros(0, np.int32), np.zeros(0))


@dataclasses.dataclass
class LabelReport:
  """What `load_label_map` found in a file."""

  path: str
  mode: str  # "ids" | "raw-ids" | "palette"
  shape: tuple[int, int]
  class_pixels: dict[int, int]  # class id (or -1 = unknown) -> pixel count
  # Colours that were not exactly in the palette (iterates as (rgb, count, class, distance),
  # most common first).
  unknown_colors: colour_snap.SnappedColours = dataclasses.field(default_factory=_no_snaps)
  source_shape: tuple[int, int] | None = None  # (H, W) as read, before any resize

  @property
  def snapped_pixels(self) -> int:
    return self.unknown_colors.pixels

  def snap_report(self, table: palettes.ClassTable | None = None, max_items: int = 5) -> str:
    """The colours snapped, most common first, each with its nearest class ("" if none)."""
    snaps = self.unknown_colors
    if not len(snaps):
      return ""
    h, w = self.source_shape or self.shape
    total = h * w
    under = f" palette {table.name!r}" if table is not None else " the palette"
    lines = [f"{self.path}: {len(snaps)} colours not in{under} ({snaps.pixels} of {total} px) "
             "were snapped to the nearest class; the most common:"]
    for rgb, count, cls, dist in snaps.top(max_items):
      if table is not None and 0 <= cls < table.num_classes:
        target = f"{table.names[cls]!r} {_rgb(table.colors[cls])}"
      else:
        target = f"class {cls}"
      lines.append(f"  {_rgb(rgb)} x {count} px -> nearest {target}, distance {dist:.3g}")
    if len(snaps) > max_items:
      lines.append(f"  ... and {len(snaps) - max_items} more colours; repaint them with the "
                   "palette's exact colours (docs/data.md) to silence this")
    return "\n".join(lines)

  def summary(self, names: tuple[str, ...] | None = None, max_items: int = 10) -> str:
    lines = [f"{self.path}: {self.mode} {self.shape[0]}x{self.shape[1]}, "
             f"{len(self.class_pixels)} classes present"]
    if len(self.unknown_colors):
      lines.append(f"  {len(self.unknown_colors)} colours not in the palette "
                   f"({self.snapped_pixels} px) snapped to the nearest entry:")
      for rgb, count, cls, dist in self.unknown_colors.top(max_items):
        nm = names[cls] if names and 0 <= cls < len(names) else str(cls)
        lines.append(f"    rgb{rgb}: {count} px -> class {cls} ({nm}), distance {dist:.1f}")
    return "\n".join(lines)


def _rgb(c) -> str:
  return "(" + ",".join(str(int(v)) for v in c) + ")"


def snap_to_palette(rgb: np.ndarray, colors: np.ndarray
                    ) -> tuple[np.ndarray, colour_snap.SnappedColours]:
  """Maps each pixel of an (H, W, 3) RGB array to the id of the nearest palette colour.

  Ties (palettes with repeated colours, e.g. Cityscapes) go to the lowest id. Exact, and
  seconds with bounded memory even for a 4096^2 map of random colours (see colour_snap).

  Returns:
    (ids (H, W) int32, the colours that were not exact entries: (rgb, count, id, distance)
    when iterated, most common first).
  """
  return colour_snap.snap(rgb, colors)


# (palette name, colour) pairs whose tie was already reported in this process.
_TIES_REPORTED: set[tuple[str, tuple[int, ...]]] = set()


def _report_ties(path: str, table: palettes.ClassTable, ids: np.ndarray) -> None:
  """Warns once per palette colour that several classes share, when a map uses it."""
  for colour, members in palettes.colour_ties(table):
    key = (table.name, colour)
    if key in _TIES_REPORTED or not (ids == members[0]).any():
      continue
    _TIES_REPORTED.add(key)
    named = ", ".join(f"{i} {table.names[i]!r}" for i in members)
    others = ", ".join(str(i) for i in members[1:])
    logging.warning(
        "%s: palette %r gives classes %s the same colour %s; pixels of that colour become "
        "class %d %r. To paint the other class%s (id %s), use a single-channel id PNG whose "
        "pixel values are class ids.", path, table.name, named, _rgb(colour), members[0],
        table.names[members[0]], "es" if len(members) > 2 else "", others)


def _check_aspect(path: str, shape: tuple[int, int], size: int | tuple[int, int]) -> None:
  """Warns when resizing to `size` would stretch the map (aspect ratios > 2% apart)."""
  h_out, w_out = (size, size) if isinstance(size, int) else size
  h, w = shape
  ratio = (w / h) / (w_out / h_out)
  if abs(ratio - 1.0) > _ASPECT_TOLERANCE:
    logging.warning("%s: a %dx%d (HxW) map resized to the model's %dx%d: aspect ratios %.3g "
                    "vs %.3g, so its shapes are stretched; crop or pad it to the model's "
                    "aspect ratio first to avoid that.", path, h, w, h_out, w_out, w / h,
                    w_out / h_out)


_ASPECT_TOLERANCE = 0.02


def _check_ids(ids: np.ndarray, num_classes: int, path: str, allow_unknown: bool) -> None:
  vals, counts = np.unique(ids, return_counts=True)
  bad = (vals >= num_classes) | (vals < (UNKNOWN if allow_unknown else 0))
  if bad.any():
    listing = ", ".join(f"{int(v)} ({int(c)} px)" for v, c in zip(vals[bad][:20], counts[bad][:20]))
    raise ValueError(
        f"{path}: label ids outside the class table 0..{num_classes - 1}: {listing}. "
        "If this is a colour-coded map, pass palette=... (a dataset name or a JSON file); if "
        "a value marks don't-care pixels (e.g. 255), pass unknown_value=that value; if the "
        "file uses a dataset's raw convention (ADE20K 0 = unlabeled), pass dataset=... "
        "(on the command line: --config.sample.label_format=raw_ids)")


LABEL_FORMATS = ("auto", "ids", "palette", "raw_ids")


def format_options(label_format: str, palette: str, dataset: str
                   ) -> tuple[str | None, str | None]:
  """(palette, dataset) arguments of `load_label_map` for `config.sample.label_format`.

  "ids": class ids; "raw_ids": ids in `dataset`'s raw convention (ADE20K 0 = unlabeled);
  "palette" and "auto": colour maps through `palette` (single-channel maps stay class ids).
  """
  if label_format not in LABEL_FORMATS:
    raise ValueError(f"config.sample.label_format={label_format!r} is unknown; use one of "
                     f"{', '.join(LABEL_FORMATS)}")
  if label_format == "ids":
    return None, None
  if label_format == "raw_ids":
    return None, dataset
  return palette, None


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
  unknown_colors = _no_snaps()
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
    _report_ties(path, table, ids)
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
  read_shape = tuple(ids.shape)
  if size is not None:
    _check_aspect(path, read_shape, size)
    ids = noisy.resize_nearest(ids, size)
  vals, counts = np.unique(ids, return_counts=True)
  report = LabelReport(path, report_mode, tuple(ids.shape),
                       {int(v): int(c) for v, c in zip(vals, counts)}, unknown_colors,
                       read_shape)
  if len(unknown_colors):  # once per file, a few lines: what was snapped to what
    logging.warning("%s", report.snap_report(table))
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

