"""TFDS builders for the four SIS datasets, reading the user's downloads from manual_dir.

TFDS's own `scene_parse150` / `cityscapes` do not store what SIS needs (users.md §2.1), and
there are no COCO-Stuff / CelebAMask-HQ builders, so these read the layouts SPADE/SDM/SCDM
use (see `layouts.py`). Importing this module registers them:

  tfds build ade20k_sis --imports scdm_jax.data.tfds_builders --manual_dir ~/downloads

manual_dir may hold the extracted folder (the layout of `layouts.py`) or, for ADE20K and
Cityscapes, the original archives (`ADEChallengeData2016.zip`; `leftImg8bit_trainvaltest.zip`
+ `gtFine_trainvaltest.zip`), which are extracted by the download manager.

Each example: `image` (the original file's bytes, unchanged), `label` (H, W, 1) with the
dataset's *raw* values (ADE20K 0 = unlabeled, COCO-Stuff 255 = unlabeled; map them with
`layouts.get_spec(name).raw_to_class`), `file_name`, and `instance` (H, W, 1) uint16 for
COCO-Stuff and Cityscapes. Labels are validated against the class table while building.
"""

from __future__ import annotations

import importlib.resources
import os
import sys

import numpy as np

try:
  import importlib_resources  # noqa: F401  # pylint: disable=unused-import
except ImportError:
  # tensorflow-datasets 4.9.x imports the `importlib_resources` backport lazily when it
  # registers a builder defined outside its package, but does not depend on it; the stdlib
  # module (Python >= 3.11) provides the same `abc.Traversable`.
  import importlib.resources.abc  # pylint: disable=ungrouped-imports
  sys.modules["importlib_resources"] = importlib.resources

import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from scdm_jax.data import layouts

_ARCHIVES = {
    "ade20k": ("ADEChallengeData2016.zip",),
    "cityscapes": ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip"),
    "coco_stuff": (),
    "celebamask_hq": (),
}

_SPLITS = {
    "ade20k": {"train": "train", "validation": "validation"},
    "coco_stuff": {"train": "train", "validation": "validation"},
    "celebamask_hq": {"train": "train", "test": "test"},
    "cityscapes": {"train": "train", "validation": "validation"},
}

_INSTRUCTIONS = {
    "ade20k": "Put `ADEChallengeData2016.zip` (or the extracted `ADEChallengeData2016/` "
              "folder with images/ and annotations/) in manual_dir.",
    "coco_stuff": "Put the SPADE-layout COCO-Stuff folder (train_img/, train_label/, "
                  "train_inst/, val_img/, val_label/, val_inst/) in manual_dir (or make "
                  "manual_dir that folder).",
    "celebamask_hq": "Put the SDM-layout CelebAMask-HQ folder (train/{images,labels}/, "
                     "test/{images,labels}/ with merged 19-class label PNGs) in manual_dir.",
    "cityscapes": "Put `leftImg8bit_trainvaltest.zip` and `gtFine_trainvaltest.zip` (or the "
                  "extracted leftImg8bit/ and gtFine/ folders) in manual_dir.",
}


def _find_root(dataset: str, dl_manager) -> str:
  """The folder holding the dataset's layout: manual_dir itself, a child, or extracted zips."""
  manual = os.fspath(dl_manager.manual_dir)
  if not os.path.isdir(manual):
    raise FileNotFoundError(f"{dataset}: manual_dir {manual} does not exist. "
                            + _INSTRUCTIONS[dataset])
  candidates = [manual] + [os.path.join(manual, c) for c in sorted(os.listdir(manual))]
  for cand in candidates:
    if not os.path.isdir(cand):
      continue
    try:
      layouts.list_examples(dataset, cand, "train", require_images=False)
      return cand
    except FileNotFoundError:
      continue
  archives = [os.path.join(manual, a) for a in _ARCHIVES[dataset]]
  if archives and all(os.path.exists(a) for a in archives):
    extracted = [os.fspath(p) for p in dl_manager.extract(archives)]
    if dataset == "ade20k":
      return extracted[0]
    # Cityscapes: both zips hold top-level leftImg8bit/ and gtFine/; link them side by side.
    root = os.path.join(os.fspath(dl_manager.extract_dir), "cityscapes_merged")
    os.makedirs(root, exist_ok=True)
    for ex, sub in zip(extracted, ("leftImg8bit", "gtFine")):
      link = os.path.join(root, sub)
      if not os.path.exists(link):
        os.symlink(os.path.join(ex, sub), link)
    return root
  raise FileNotFoundError(f"{dataset}: found neither the folder layout nor the archives in "
                          f"manual_dir {manual}. " + _INSTRUCTIONS[dataset])


class _SisBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared logic; subclasses set DATASET."""

  DATASET = ""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release (SPADE/SDM/SCDM layouts)."}

  def _info(self) -> tfds.core.DatasetInfo:
    spec = layouts.get_spec(self.DATASET)
    label_dtype = np.uint8
    feats = {
        "image": tfds.features.Image(shape=(None, None, 3)),
        "label": tfds.features.Image(shape=(None, None, 1), dtype=label_dtype,
                                     encoding_format="png"),
        "file_name": tfds.features.Text(),
    }
    if spec.has_instances:
      feats["instance"] = tfds.features.Image(shape=(None, None, 1), dtype=np.uint16,
                                              encoding_format="png")
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{self.DATASET} for semantic image synthesis, raw label values. "
                    + spec.description,
        features=tfds.features.FeaturesDict(feats),
        supervised_keys=None,
    )

  def _split_generators(self, dl_manager):
    root = _find_root(self.DATASET, dl_manager)
    return {name: self._generate_examples(root, split)
            for name, split in _SPLITS[self.DATASET].items()}

  def _generate_examples(self, root: str, split: str):
    spec = layouts.get_spec(self.DATASET)
    for ex in layouts.list_examples(self.DATASET, root, split):
      raw = layouts.read_raw_label(ex.label)
      spec.raw_to_class(raw, ex.label)  # refuse bad files at build time, naming them
      record = {"image": ex.image, "label": raw.astype(np.uint8)[..., None],
                "file_name": ex.name}
      if spec.has_instances:
        if ex.instance is None:
          raise FileNotFoundError(f"{self.DATASET}: no instance map for {ex.label}")
        inst = layouts.read_raw_label(ex.instance)
        if inst.max(initial=0) > 65535:
          raise ValueError(f"{ex.instance}: instance ids above 65535 do not fit uint16")
        record["instance"] = inst.astype(np.uint16)[..., None]
      yield ex.name, record


class Ade20kSis(_SisBuilder):
  """ADE20K (ADEChallengeData2016), 150 classes + unlabeled."""

  DATASET = "ade20k"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS["ade20k"]


class CocoStuffSis(_SisBuilder):
  """COCO-Stuff in the SPADE layout, 182 classes + unlabeled, with instance maps."""

  DATASET = "coco_stuff"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS["coco_stuff"]


class CelebamaskHqSis(_SisBuilder):
  """CelebAMask-HQ in the SDM layout, 19 classes."""

  DATASET = "celebamask_hq"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS["celebamask_hq"]


class CityscapesSis(_SisBuilder):
  """Cityscapes gtFine labelIds (35 classes) with instanceIds."""

  DATASET = "cityscapes"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS["cityscapes"]


BUILDERS = {"ade20k": Ade20kSis, "coco_stuff": CocoStuffSis,
            "celebamask_hq": CelebamaskHqSis, "cityscapes": CityscapesSis}
