"""Object boxes for Paint-by-Example training triplets: box sources -> `BoxRecord` lists.

Sources:
- Open Images box CSVs (`ImageID,...,XMin,XMax,YMin,YMax,...`, normalised coordinates)
  over a folder of `<ImageID>.jpg` images: PbE's official training data.
- COCO instance JSON (`images`, `annotations` with `bbox` [x, y, w, h] in pixels).
- Boxes derived from label/instance maps of the datasets this project reads (ADE20K,
  COCO-Stuff, Cityscapes, the procedural dataset): connected components covering 2-50% of
  the image, stuff classes excluded by a list (`DEFAULT_STUFF`).

Boxes are (x0, y0, x1, y1) pixels of the original image, x1/y1 exclusive. A bad record (a
missing image, a box outside the image or of zero size) is one line naming the file and the
row; `on_bad_record="stop"` raises it as a ValueError, "skip" drops and lists it in
`BoxSet.skipped`, so one bad row never costs a run. A source that yields no box at all is
an error either way. Record order is sorted by (image, box), identical on every host.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from scdm_jax.data import datasets
from scdm_jax.data import palettes

ON_BAD = ("skip", "stop")
# A box may overshoot the image by this many pixels (float rounding in annotations).
EDGE_TOLERANCE = 1.0

# Stuff classes (by name) whose regions are never "objects" (unlabeled included).
DEFAULT_STUFF: dict[str, tuple[str, ...]] = {
    "procedural": ("sky", "mountain", "grass", "water", "sand", "unlabeled"),
    "ade20k": ("wall", "building", "sky", "floor", "ceiling", "road", "grass", "sidewalk",
               "earth", "mountain", "water", "sea", "field", "fence", "rock", "sand",
               "skyscraper", "path", "stairs", "runway", "stairway", "river", "hill",
               "dirt track", "land", "lake", "railing", "house", "unlabeled"),
    "coco_stuff": tuple(palettes.get_class_table("coco_stuff").names[91:]),
    "cityscapes": tuple(palettes.get_class_table("cityscapes").names[:19])
                  + ("vegetation", "terrain", "sky", "license plate"),
}


@dataclasses.dataclass(frozen=True)
class BoxRecord:
  """One object box of one image.

  Attributes:
    image: image file path, or "" for a procedural example.
    box: (x0, y0, x1, y1) pixels, x1/y1 exclusive.
    label: class name (or Open Images label id).
    index: procedural example index (-1 for files).
    size: (H, W) of the image.
    procedural_seed, procedural_split: the procedural example's content key.
  """

  image: str
  box: tuple[int, int, int, int]
  label: str
  index: int = -1
  size: tuple[int, int] = (0, 0)
  procedural_seed: int = 0
  procedural_split: str = "train"


@dataclasses.dataclass
class BoxSet:
  """Records plus one line per skipped bad record."""

  records: list[BoxRecord]
  skipped: list[str] = dataclasses.field(default_factory=list)


class _Bad:
  """Collects or raises bad-record lines, by the `on_bad_record` switch."""

  def __init__(self, on_bad_record: str):
    if on_bad_record not in ON_BAD:
      raise ValueError(f"on_bad_record={on_bad_record!r}: use 'skip' or 'stop'")
    self.stop = on_bad_record == "stop"
    self.lines: list[str] = []

  def __call__(self, line: str) -> None:
    if self.stop:
      raise ValueError(line)
    self.lines.append(line)


def check_box(box: Sequence[float], size: tuple[int, int]) -> tuple[int, int, int, int] | str:
  """Pixel box -> int box clamped to the image, or the reason it is bad."""
  h, w = size
  x0, y0, x1, y1 = (float(v) for v in box)
  if not all(np.isfinite([x0, y0, x1, y1])):
    return f"box {box} is not finite"
  t = EDGE_TOLERANCE
  if x0 < -t or y0 < -t or x1 > w + t or y1 > h + t:
    return f"box {tuple(round(v, 2) for v in (x0, y0, x1, y1))} is outside the {w}x{h} image"
  ib = (max(0, int(np.floor(x0))), max(0, int(np.floor(y0))),
        min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1))))
  if x1 - x0 <= 0 or y1 - y0 <= 0 or ib[2] <= ib[0] or ib[3] <= ib[1]:
    return f"box {tuple(round(v, 2) for v in (x0, y0, x1, y1))} has zero size"
  return ib


def _image_size(path: str) -> tuple[int, int]:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(path) as im:  # reads the header only
    return im.height, im.width


def _finish(records: list[BoxRecord], bad: _Bad, what: str) -> BoxSet:
  if not records:
    more = f" ({len(bad.lines)} bad records skipped; first: {bad.lines[0]})" if bad.lines else ""
    raise ValueError(f"{what}: no usable boxes{more}")
  records.sort(key=lambda r: (r.image, r.index, r.box, r.label))
  return BoxSet(records, bad.lines)


def open_images_boxes(csv_path: str, image_dir: str, *, on_bad_record: str = "stop",
                      labels: Iterable[str] | None = None, ext: str = ".jpg") -> BoxSet:
  """Reads an Open Images box CSV (e.g. oidv6-train-annotations-bbox.csv) over image_dir.

  Args:
    csv_path: CSV with columns ImageID, LabelName, XMin, XMax, YMin, YMax (normalised).
    image_dir: folder holding `<ImageID><ext>`; rows of images not there are bad records.
    on_bad_record: "stop" raises the first bad row, "skip" skips and lists it.
    labels: keep only these LabelNames (None = all).
    ext: image file extension.

  Returns:
    BoxSet, sorted by (image, box).

  Raises:
    ValueError: a bad row with "stop", missing columns, or no usable box.
  """
  bad, keep = _Bad(on_bad_record), set(labels) if labels is not None else None
  if not os.path.isdir(image_dir):
    raise ValueError(f"{csv_path}: image folder {image_dir} does not exist")
  sizes: dict[str, tuple[int, int] | None] = {}
  records = []
  with open(csv_path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    need = {"ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax"}
    if not need.issubset(reader.fieldnames or ()):
      raise ValueError(f"{csv_path}: missing columns {sorted(need - set(reader.fieldnames or ()))}"
                       " (an Open Images box CSV has ImageID,LabelName,XMin,XMax,YMin,YMax)")
    for row_no, row in enumerate(reader, start=2):  # row 1 is the header
      where = f"{csv_path}:{row_no}"
      if keep is not None and row["LabelName"] not in keep:
        continue
      path = os.path.join(image_dir, row["ImageID"] + ext)
      if path not in sizes:
        sizes[path] = _image_size(path) if os.path.isfile(path) else None
      if sizes[path] is None:
        bad(f"{where}: image {path} does not exist")
        continue
      h, w = sizes[path]
      try:
        nb = [float(row[k]) for k in ("XMin", "YMin", "XMax", "YMax")]
      except ValueError:
        bad(f"{where}: non-numeric box {[row[k] for k in ('XMin', 'YMin', 'XMax', 'YMax')]}")
        continue
      box = check_box((nb[0] * w, nb[1] * h, nb[2] * w, nb[3] * h), (h, w))
      if isinstance(box, str):
        bad(f"{where}: {box}")
        continue
      records.append(BoxRecord(path, box, row["LabelName"], size=(h, w)))
  return _finish(records, bad, f"{csv_path} over {image_dir}")


def coco_boxes(json_path: str, image_dir: str, *, on_bad_record: str = "stop",
               include_crowd: bool = False) -> BoxSet:
  """Reads a COCO instances JSON (e.g. instances_train2017.json) over image_dir.

  Args:
    json_path: the JSON; `images[].{id,file_name,width,height}`, `annotations[].{image_id,
      bbox,category_id,iscrowd}`, `categories[].{id,name}`.
    image_dir: the folder of the `file_name`s.
    on_bad_record: "stop" | "skip" (see the module docstring).
    include_crowd: keep iscrowd=1 boxes (groups, not objects: dropped by default).

  Returns:
    BoxSet, sorted by (image, box).
  """
  bad = _Bad(on_bad_record)
  with open(json_path, encoding="utf-8") as f:
    data = json.load(f)
  images = {im["id"]: im for im in data.get("images", [])}
  names = {c["id"]: c["name"] for c in data.get("categories", [])}
  records, exists = [], {}
  for row, ann in enumerate(data.get("annotations", [])):
    where = f"{json_path}: annotation {row} (id {ann.get('id')})"
    if ann.get("iscrowd", 0) and not include_crowd:
      continue
    im = images.get(ann.get("image_id"))
    if im is None:
      bad(f"{where}: image_id {ann.get('image_id')} is not in `images`")
      continue
    path = os.path.join(image_dir, im["file_name"])
    if path not in exists:
      exists[path] = os.path.isfile(path)
    if not exists[path]:
      bad(f"{where}: image {path} does not exist")
      continue
    h, w = int(im["height"]), int(im["width"])
    x, y, bw, bh = (float(v) for v in ann["bbox"])
    box = check_box((x, y, x + bw, y + bh), (h, w))
    if isinstance(box, str):
      bad(f"{where}: {box}")
      continue
    label = names.get(ann.get("category_id"), str(ann.get("category_id")))
    records.append(BoxRecord(path, box, label, size=(h, w)))
  return _finish(records, bad, f"{json_path} over {image_dir}")


def component_boxes(label: np.ndarray, instance: np.ndarray | None = None, *,
                    stuff_ids: Iterable[int] = (), min_frac: float = 0.02,
                    max_frac: float = 0.5) -> list[tuple[tuple[int, int, int, int], int]]:
  """Connected components of a label map as object boxes.

  Components are taken per (class, instance id) pair when an instance map is given (two
  touching objects of one class stay apart), else per class.

  Args:
    label: (H, W) int class ids.
    instance: optional (H, W) int instance ids.
    stuff_ids: class ids never used as objects.
    min_frac, max_frac: keep components whose pixel count is within this share of H*W.

  Returns:
    [((x0, y0, x1, y1), class id)], in scan order of the (class, instance) keys.
  """
  label = np.asarray(label).astype(np.int64)
  key = label if instance is None else label * (1 << 32) + np.asarray(instance, np.int64)
  stuff = np.isin(label, np.fromiter(stuff_ids, np.int64))
  total = label.size
  out = []
  for k in np.unique(key[~stuff]):
    comp, n = ndimage.label(key == k)
    if n == 0:
      continue
    counts = np.bincount(comp.ravel())
    for j, sl in enumerate(ndimage.find_objects(comp), start=1):
      if sl is not None and min_frac <= counts[j] / total <= max_frac:
        box = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
        out.append((box, int(k >> 32) if instance is not None else int(k)))
  return out


def stuff_ids_for(names: Sequence[str], stuff: Iterable[str]) -> list[int]:
  """Class ids of the stuff names (a name not in the table is an error: likely a typo)."""
  index = {n: i for i, n in enumerate(names)}
  missing = [s for s in stuff if s not in index]
  if missing:
    raise ValueError(f"stuff classes {missing} are not class names of this dataset")
  return [index[s] for s in stuff]


def dataset_boxes(data_config, split: str = "train", *, stuff: Iterable[str] | None = None,
                  min_frac: float = 0.02, max_frac: float = 0.5,
                  use_instance: bool = True) -> BoxSet:
  """Boxes from the label (and instance) maps of a dataset the SCDM pipeline reads.

  Reads every label map of the split once (for the procedural dataset: generates it).

  Args:
    data_config: as for `datasets.create_dataset` (`name`, `root`, `image_size`, ...).
    split: "train" | "validation".
    stuff: excluded class names (default `DEFAULT_STUFF[name]`).
    min_frac, max_frac: component size bounds as a share of the image.
    use_instance: split components by instance id where the dataset has instance maps.

  Returns:
    BoxSet; procedural records carry (index, size, seed, split) instead of a path.
  """
  source = datasets.make_source(data_config, split)
  if source.records is not None:  # box records name image files (or procedural indices)
    raise ValueError("Paint-by-Example box lists read image files: set data.source='folders'")
  stuff = DEFAULT_STUFF.get(source.name, ("unlabeled",)) if stuff is None else tuple(stuff)
  table = palettes.get_class_table(source.name)
  stuff_ids = stuff_ids_for(table.names, stuff)
  need_inst = use_instance and source.has_instances
  records = []
  for i in range(len(source)):
    _, label, inst = source.load(i, need_image=False, need_instance=need_inst)
    boxes = component_boxes(label, inst if need_inst else None, stuff_ids=stuff_ids,
                            min_frac=min_frac, max_frac=max_frac)
    for box, cls in boxes:
      if source.examples is None:
        records.append(BoxRecord("", box, table.names[cls], index=i, size=label.shape,
                                 procedural_seed=source.procedural_seed,
                                 procedural_split=source.split))
      else:
        records.append(BoxRecord(source.examples[i].image or "", box, table.names[cls],
                                 size=label.shape))
  return _finish(records, _Bad("skip"), f"{source.name} {split} ({len(source)} label maps)")


def procedural_boxes(data_config, num_examples: int = 64, *, size: int = 64, seed: int = 0,
                     split: str = "train", **kwargs) -> BoxSet:
  """`dataset_boxes` of the procedural dataset (no files): objects are trees, rocks, buildings.

  Args:
    data_config: a full data section (configs/default.py's `config.data`); its name, size,
      example count and content seed are replaced by the arguments here.
  """
  cfg = dict(data_config.to_dict() if hasattr(data_config, "to_dict") else data_config,
             name="procedural", image_size=size, num_examples=num_examples,
             procedural_seed=seed)
  return dataset_boxes(cfg, split, **kwargs)
