"""TFDS builders for the four SIS datasets (read from manual_dir) and the procedural one.

TFDS's own `scene_parse150` / `cityscapes` do not store what SIS needs (users.md §2.1), and
there are no COCO-Stuff / CelebAMask-HQ builders, so these read the layouts SPADE/SDM/SCDM
use (see `layouts.py`). `tfds build` needs apache_beam, which the install lacks; prepare with

  python -m scdm_jax.data.tfds_builders --dataset ade20k --manual_dir ~/downloads \
      --data_dir ~/tensorflow_datasets        # or --data_dir gs://bucket/tfds

manual_dir may hold the extracted folder (the layout of `layouts.py`) or, for ADE20K and
Cityscapes, the original archives (`ADEChallengeData2016.zip`; `leftImg8bit_trainvaltest.zip`
+ `gtFine_trainvaltest.zip`), which the download manager extracts.

`prepare` (the command above) writes array_record (random access, what `data.source="tfds"`
reads; constructing a builder yourself keeps TFDS's default tfrecord, which `as_dataset`
needs); examples are
written in the sorted order of the folder path (integer keys, shuffling disabled) and the
split's file names are kept in metadata.json, so record i is example i (`tfds_source.py`).

Each example: `image` (the original file's bytes, unchanged; PNG for procedural), `label`
(H, W, 1) with the dataset's *raw* values (ADE20K 0 = unlabeled, COCO-Stuff 255 = unlabeled;
map them with `layouts.get_spec(name).raw_to_class`; procedural: class ids), `file_name`, and
`instance` (H, W, 1) uint16 for COCO-Stuff, Cityscapes and procedural. Labels are validated
against the class table while building.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import sys
import tempfile

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

from scdm_jax.data import datasets
from scdm_jax.data import layouts
from scdm_jax.data import procedural
from scdm_jax.data import tfds_source
from scdm_jax.io import fileio

FILE_FORMAT = "array_record"

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


def _find_root(dataset: str, dl_manager) -> tuple[str, str | None]:
  """(root, label_root) of the dataset's layout: manual_dir itself, a child, or its archives.

  label_root is None unless the Cityscapes zips were extracted (to two folders).
  """
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
      return cand, None
    except FileNotFoundError:
      continue
  archives = [os.path.join(manual, a) for a in _ARCHIVES[dataset]]
  if archives and all(os.path.exists(a) for a in archives):
    # DownloadManager.extract (TFDS 4.9) returns one folder per archive; Cityscapes' zips hold
    # leftImg8bit/ and gtFine/ at their top level, read from their two folders.
    extracted = [os.fspath(p) for p in dl_manager.extract(archives)]
    if dataset == "ade20k":
      return extracted[0], None
    return extracted[0], extracted[1]
  raise FileNotFoundError(f"{dataset}: found neither the folder layout nor the archives in "
                          f"manual_dir {manual}. " + _INSTRUCTIONS[dataset])


class _SisBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared logic; subclasses set DATASET."""

  DATASET = ""
  VERSION = tfds.core.Version(tfds_source.VERSION)
  RELEASE_NOTES = {"1.0.0": "Initial release (SPADE/SDM/SCDM layouts)."}

  def _info(self) -> tfds.core.DatasetInfo:
    spec = layouts.get_spec(self.DATASET)
    feats = {
        "image": tfds.features.Image(shape=(None, None, 3)),
        "label": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8,
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
        disable_shuffling=True,  # record i = example i of the sorted list
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    root, label_root = _find_root(self.DATASET, dl_manager)
    lists = {name: layouts.list_examples(self.DATASET, root, split, label_root=label_root)
             for name, split in _SPLITS[self.DATASET].items()}
    self.info.metadata["file_names"] = {k: [e.name for e in v] for k, v in lists.items()}
    return {name: self._generate_examples(examples) for name, examples in lists.items()}

  def _generate_examples(self, examples: list[layouts.Example]):
    spec = layouts.get_spec(self.DATASET)
    for i, ex in enumerate(examples):
      raw = layouts.read_raw_label(ex.label)
      spec.raw_to_class(raw, ex.label)  # refuse bad files at build time, naming them
      record = {"image": ex.image, "label": raw.astype(np.uint8)[..., None],
                "file_name": ex.name}
      if spec.has_instances:
        if ex.instance is None:
          raise FileNotFoundError(f"{self.DATASET}: no instance map for {ex.label}")
        record["instance"] = _uint16(layouts.read_raw_label(ex.instance), ex.instance)
      yield i, record  # integer keys: with shuffling disabled, records keep this order


def _uint16(inst: np.ndarray, where: str) -> np.ndarray:
  if inst.max(initial=0) > 65535 or inst.min(initial=0) < 0:
    raise ValueError(f"{where}: instance ids outside 0..65535 do not fit uint16")
  return inst.astype(np.uint16)[..., None]


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


class ProceduralConfig(tfds.core.BuilderConfig):
  """One procedural dataset: image size, train-split size and content seed."""

  def __init__(self, *, image_size: int = 32, num_train: int = 0, seed: int = 0):
    num_train = datasets.procedural_split_size(num_train, "train")
    super().__init__(name=tfds_source.procedural_config_name(image_size, num_train, seed),
                     description=f"{image_size} px, {num_train} train examples, seed {seed}")
    self.image_size = int(image_size)
    self.num_train = num_train
    self.seed = int(seed)


class ProceduralSis(tfds.core.GeneratorBasedBuilder):
  """The procedural landscapes (`procedural.py`), the same examples as data.source=folders."""

  VERSION = tfds.core.Version(tfds_source.VERSION)
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [ProceduralConfig()]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Procedural landscapes (scdm_jax.data.procedural), class-id labels.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "label": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8,
                                         encoding_format="png"),
            "instance": tfds.features.Image(shape=(None, None, 1), dtype=np.uint16,
                                            encoding_format="png"),
            "file_name": tfds.features.Text(),
        }),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    cfg = self.builder_config
    sizes = {s: datasets.procedural_split_size(cfg.num_train, s) for s in ("train", "validation")}
    self.info.metadata["file_names"] = {s: datasets.procedural_names(s, n)
                                        for s, n in sizes.items()}
    return {s: self._generate_examples(s, n) for s, n in sizes.items()}

  def _generate_examples(self, split: str, n: int):
    cfg = self.builder_config
    names = datasets.procedural_names(split, n)
    for i in range(n):
      ex = procedural.generate(i, size=cfg.image_size, seed=cfg.seed, split=split)
      yield i, {"image": ex["image"], "label": ex["label"][..., None],
                "instance": _uint16(ex["instance"], names[i]), "file_name": names[i]}


BUILDERS = {"ade20k": Ade20kSis, "coco_stuff": CocoStuffSis,
            "celebamask_hq": CelebamaskHqSis, "cityscapes": CityscapesSis,
            "procedural": ProceduralSis}


def make_builder(dataset: str, data_dir: str, *, image_size: int = 32, num_train: int = 0,
                 seed: int = 0) -> tfds.core.DatasetBuilder:
  """The builder of `dataset` writing array_record under the local folder `data_dir`."""
  if dataset not in BUILDERS:
    raise ValueError(f"unknown dataset {dataset!r}: use one of {', '.join(BUILDERS)}")
  kwargs = {}
  if dataset == "procedural":
    kwargs["config"] = ProceduralConfig(image_size=image_size, num_train=num_train, seed=seed)
  # array_record: random access (TFDS 4.9's as_dataset cannot read it; as_data_source can).
  return BUILDERS[dataset](data_dir=data_dir, file_format=FILE_FORMAT, **kwargs)


def prepare(dataset: str, data_dir: str, *, manual_dir: str = "", image_size: int = 32,
            num_train: int = 0, seed: int = 0) -> str:
  """Builds `dataset` into data_dir (a folder or a URL); returns the dataset's folder.

  array_record files can only be written locally, so a URL data_dir is built in a local
  temporary folder and each finished file uploaded (each object appears whole).
  """
  def builder(local_dir: str):
    return make_builder(dataset, local_dir, image_size=image_size, num_train=num_train,
                        seed=seed)

  def build(b) -> str:
    config = tfds.download.DownloadConfig(manual_dir=os.path.expanduser(manual_dir)
                                          if manual_dir else None)
    b.download_and_prepare(download_config=config)
    return os.fspath(b.data_dir)

  if not fileio.is_url(data_dir):
    return build(builder(os.path.expanduser(data_dir)))  # TFDS skips a prepared dataset
  with tempfile.TemporaryDirectory(prefix="scdm_tfds_") as tmp:
    b = builder(tmp)
    url = fileio.join(data_dir, os.path.relpath(os.fspath(b.data_dir), tmp).replace(os.sep, "/"))
    if fileio.exists(fileio.join(url, "dataset_info.json")):
      return url  # already prepared there
    built = build(b)
    # dataset_info.json last: a reader that finds it finds every file it lists.
    files = sorted(os.listdir(built), key=lambda f: f == "dataset_info.json")
    for f in files:
      fileio.upload(os.path.join(built, f), fileio.join(url, f))
  return url


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m scdm_jax.data.tfds_builders",
                              description="Prepares a dataset as TFDS array_record files "
                              "(what data.source=tfds reads); see docs/data.md.")
  p.add_argument("--dataset", required=True, choices=tuple(BUILDERS))
  p.add_argument("--data_dir", required=True, help="TFDS data_dir: a folder or gs://bucket/dir")
  p.add_argument("--manual_dir", default="", help="the downloaded dataset (not procedural)")
  p.add_argument("--image_size", type=int, default=32, help="procedural: data.image_size")
  p.add_argument("--num_examples", type=int, default=0, help="procedural: data.num_examples")
  p.add_argument("--procedural_seed", type=int, default=0, help="procedural: content seed")
  args = p.parse_args(argv)
  if args.dataset != "procedural" and not args.manual_dir:
    p.error(f"--manual_dir is required for {args.dataset}: " + _INSTRUCTIONS[args.dataset])
  out = prepare(args.dataset, args.data_dir, manual_dir=args.manual_dir,
                image_size=args.image_size, num_train=args.num_examples,
                seed=args.procedural_seed)
  print(f"prepared {args.dataset} in {out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
