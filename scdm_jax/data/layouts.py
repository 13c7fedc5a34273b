"""Folder layouts of the four SIS datasets and their raw-value -> class-id mappings.

Layouts (the ones SPADE, SDM and SCDM read; `root` may also be the parent folder where noted):

- ade20k: `ADEChallengeData2016/images/{training,validation}/*.jpg` and
  `ADEChallengeData2016/annotations/{training,validation}/*.png` (root = the
  ADEChallengeData2016 folder or its parent). Raw 0 ("unlabeled") -> class 150, raw k -> k-1.
- coco_stuff: `{train,val}_img/*.jpg`, `{train,val}_label/*.png`, `{train,val}_inst/*.png`
  (SPADE layout). Raw 0..181 kept, raw 255 ("unlabeled") -> class 182.
- celebamask_hq: `{train,test}/images/*.jpg` and `{train,test}/labels/*.png` (SDM layout),
  19 classes, no remapping, no instance maps (the label map gives the edges).
- cityscapes: `leftImg8bit/{train,val,test}/<city>/*_leftImg8bit.png` and
  `gtFine/{split}/<city>/*_gtFine_labelIds.png` / `*_gtFine_instanceIds.png`. 35 classes
  (labelIds 0..33, 34 = license plate), no remapping.

Splits are named "train" and "validation" ("val" and "test" are accepted; "test" is the real
test split only for CelebAMask-HQ and Cityscapes). Files are matched by stem and sorted, so
the list (and everything derived from it: shards, shuffles) is the same on every host.
Every file access goes through `scdm_jax.io.fileio`, so `root` may be a URL (gs://...).
"""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np

from scdm_jax.io import fileio

DATASETS = ("ade20k", "coco_stuff", "celebamask_hq", "cityscapes")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass(frozen=True)
class Example:
  """One example on disk; `image` may be None (labels only, e.g. for sampling)."""

  name: str
  label: str
  image: str | None = None
  instance: str | None = None


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Everything the loaders need to know about a dataset's raw values."""

  name: str
  num_classes: int
  max_raw: int  # largest raw value that maps to a class (besides `unlabeled_raw`)
  unlabeled_raw: int | None  # raw value of "unlabeled" (what the corrupt command writes)
  has_instances: bool
  description: str

  def raw_to_class(self, raw: np.ndarray, path: str = "<array>") -> np.ndarray:
    """Maps raw label values to class ids (int32), refusing values outside the table."""
    raw = np.asarray(raw)
    if raw.ndim != 2:
      raise ValueError(f"{path}: a label map must be single-channel (H, W), got shape "
                       f"{raw.shape}; RGB colour maps need a palette (label_io.load_label_map)")
    if raw.dtype in (np.uint8, np.uint16):  # bincount: much faster than a sort
      counts = np.bincount(raw.ravel())
      vals = np.nonzero(counts)[0]
      counts = counts[vals]
    else:
      vals, counts = np.unique(raw, return_counts=True)
    ok = (vals >= 0) & (vals <= self.max_raw)
    if self.unlabeled_raw is not None:
      ok |= vals == self.unlabeled_raw
    if not ok.all():
      bad = ", ".join(f"{int(v)} ({int(c)} px)" for v, c in zip(vals[~ok][:20], counts[~ok][:20]))
      raise ValueError(
          f"{path}: label values outside the {self.name} table: {bad}. {self.description} "
          "Check that this is a class-id PNG of this dataset (not a colour image or another "
          "dataset's ids); convert colour maps with a palette, or fix the file.")
    if self.name in ("ade20k", "coco_stuff") and raw.dtype == np.uint8:
      return self._lut[raw]
    raw = raw.astype(np.int32)
    if self.name == "ade20k":
      return np.where(raw == 0, 150, raw - 1).astype(np.int32)
    if self.name == "coco_stuff":
      return np.where(raw == 255, 182, raw).astype(np.int32)
    return raw

  @property
  def _lut(self) -> np.ndarray:
    """uint8 raw value -> class id table (invalid entries never used: checked first)."""
    v = np.arange(256)
    if self.name == "ade20k":
      return np.where(v == 0, 150, v - 1).astype(np.int32)
    return np.where(v == 255, 182, v).astype(np.int32)

  @property
  def unlabeled_class(self) -> int | None:
    if self.unlabeled_raw is None:
      return None
    return int(self.raw_to_class(np.array([[self.unlabeled_raw]]))[0, 0])


SPECS = {
    "ade20k": DatasetSpec("ade20k", 151, 150, 0, False,
                          "ADE20K annotations hold 0 (unlabeled) and 1..150."),
    "coco_stuff": DatasetSpec("coco_stuff", 183, 181, 255, True,
                              "COCO-Stuff (SPADE) labels hold 0..181 and 255 (unlabeled)."),
    "celebamask_hq": DatasetSpec("celebamask_hq", 19, 18, None, False,
                                 "CelebAMask-HQ labels hold 0..18 (0 = background)."),
    "cityscapes": DatasetSpec("cityscapes", 35, 34, 0, True,
                              "Cityscapes labelIds hold 0..33 (34 = license plate)."),
}


def get_spec(name: str) -> DatasetSpec:
  if name not in SPECS:
    raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)} "
                     "(or 'procedural', which has no folder)")
  return SPECS[name]


def canonical_split(split: str) -> str:
  s = split.split("[")[0].lower()
  if s in ("train", "training"):
    return "train"
  if s in ("validation", "val", "valid", "eval"):
    return "validation"
  if s == "test":
    return "test"
  raise ValueError(f"unknown split {split!r}: use 'train' or 'validation' (or 'test')")


def _stems(folder: str, exts: tuple[str, ...], suffix: str = "") -> dict[str, str]:
  """Stem -> path of the files under `folder` (recursively) ending in suffix + one of exts."""
  files = fileio.walk_files(folder)
  out = {}
  for ext in exts:  # the first extension wins when a stem has several
    end = suffix + ext
    for p in files:
      base = p.rsplit("/", 1)[-1] if fileio.is_url(p) else os.path.basename(p)
      if base.endswith(end) and len(base) > len(end):
        out.setdefault(base[: -len(end)], p)
  return out


def _require_dir(path: str, dataset: str, hint: str) -> None:
  if not fileio.isdir(path):
    raise FileNotFoundError(
        f"{dataset}: folder {path} does not exist. Expected layout: {hint}. Download the "
        f"dataset and point data.root at it (see docs/data.md).")


_HINTS = {
    "ade20k": "ROOT/ADEChallengeData2016/{images,annotations}/{training,validation}/",
    "coco_stuff": "ROOT/{train,val}_{img,label,inst}/ (SPADE layout)",
    "celebamask_hq": "ROOT/{train,test}/{images,labels}/",
    "cityscapes": "ROOT/leftImg8bit/{train,val}/<city>/ and ROOT/gtFine/{train,val}/<city>/",
}


def list_examples(dataset: str, root: str, split: str, *, require_images: bool = True,
                  label_root: str | None = None) -> list[Example]:
  """Lists a split's examples, sorted by name.

  Args:
    dataset: one of DATASETS.
    root: the dataset folder (see the module docstring).
    split: "train" | "validation" | "test".
    require_images: if False, label files without a matching image are kept (image=None).
    label_root: Cityscapes only: the folder holding gtFine/ when it is not `root` (the two
      archives extract to two folders).

  Raises:
    FileNotFoundError: a folder of the layout is missing, or the split has no label files.
  """
  get_spec(dataset)  # refuses an unknown dataset name early
  split = canonical_split(split)
  root = root if fileio.is_url(root) else os.path.expanduser(root)
  if label_root is not None and dataset != "cityscapes":
    raise ValueError(f"label_root is for cityscapes only, not {dataset}")
  hint = _HINTS[dataset]
  join = fileio.join
  _require_dir(root, dataset, hint)
  inst_dir = None
  inst_suffix = ""
  label_suffix = ""
  img_suffix = ""
  if dataset == "ade20k":
    base = root
    if not fileio.isdir(join(base, "annotations")):
      base = join(root, "ADEChallengeData2016")
    sub = {"train": "training", "validation": "validation", "test": "validation"}[split]
    img_dir = join(base, "images", sub)
    lab_dir = join(base, "annotations", sub)
  elif dataset == "coco_stuff":
    sub = "train" if split == "train" else "val"
    img_dir, lab_dir = join(root, f"{sub}_img"), join(root, f"{sub}_label")
    inst_dir = join(root, f"{sub}_inst")
  elif dataset == "celebamask_hq":
    sub = "train" if split == "train" else "test"
    img_dir, lab_dir = join(root, sub, "images"), join(root, sub, "labels")
  else:  # cityscapes
    sub = {"train": "train", "validation": "val", "test": "test"}[split]
    img_dir = join(root, "leftImg8bit", sub)
    lab_dir = join(label_root or root, "gtFine", sub)
    inst_dir = lab_dir
    img_suffix, label_suffix, inst_suffix = "_leftImg8bit", "_gtFine_labelIds", "_gtFine_instanceIds"
  _require_dir(lab_dir, dataset, hint)
  labels = _stems(lab_dir, (".png",), label_suffix)
  if not labels:
    raise FileNotFoundError(f"{dataset}: no label PNGs in {lab_dir} (expected layout: {hint})")
  images: dict[str, str] = {}
  if fileio.isdir(img_dir):
    images = _stems(img_dir, IMAGE_EXTS, img_suffix)
  elif require_images:
    _require_dir(img_dir, dataset, hint)
  insts = _stems(inst_dir, (".png",), inst_suffix) if inst_dir and fileio.isdir(inst_dir) else {}
  out = []
  missing = []
  for stem in sorted(labels):
    img = images.get(stem)
    if img is None and require_images:
      missing.append(stem)
      continue
    out.append(Example(stem, labels[stem], img, insts.get(stem)))
  if missing:
    raise FileNotFoundError(
        f"{dataset}: {len(missing)} label files in {lab_dir} have no image in {img_dir} "
        f"(first: {missing[:3]}). Images and labels are matched by file stem.")
  return out


def read_raw_label(path: str) -> np.ndarray:
  """Reads a single-channel label/instance PNG as an integer array (palette PNGs: indices)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  try:
    data = fileio.read_bytes(path)
  except Exception as e:  # an object store's not-found error need not be FileNotFoundError
    if isinstance(e, FileNotFoundError) or not fileio.exists(path):
      raise FileNotFoundError(f"label file {path} does not exist") from None
    raise
  with Image.open(io.BytesIO(data)) as im:
    if im.mode in ("RGB", "RGBA"):
      arr = np.asarray(im.convert("RGB"))
      if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all():
        return arr[..., 0]
      raise ValueError(
          f"{path}: an RGB colour image where a single-channel class-id PNG was expected. "
          "Convert it with a palette (scdm_jax.data.label_io.load_label_map(..., palette=...)).")
    arr = np.asarray(im)
  return arr


def label_file_name(dataset: str, stem: str) -> str:
  """The label PNG's file name of example `stem` (what data.label_dir copies are matched by)."""
  return stem + ("_gtFine_labelIds" if dataset == "cityscapes" else "") + ".png"
