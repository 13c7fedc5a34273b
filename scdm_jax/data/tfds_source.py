"""Random access to the splits that `tfds_builders` prepared (array_record), for `datasets.py`.

The builders write examples in the order of the sorted example list (integer keys, shuffling
disabled), so record i is example i of the folder path: `datasets.IndexMap` computes the same
order and sharding for both sources and only the reads differ. Every record also carries its
`file_name`, checked on each read, so a dataset written another way fails loudly instead of
silently reordering.

array_record (0.8) opens local files only (google/array_record#120), so a URL data_dir
(gs://...) is first copied, one split at a time, to a local cache through `fileio`, atomically
(a half-copied split is never used), then read locally. TensorFlow Datasets is imported only
when a split is opened.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile

import numpy as np

from scdm_jax.io import fileio

VERSION = "1.0.0"
# data.name -> TFDS builder name (the snake_case of the builder class in tfds_builders).
BUILDER_NAMES = {"procedural": "procedural_sis", "ade20k": "ade20k_sis",
                 "coco_stuff": "coco_stuff_sis", "celebamask_hq": "celebamask_hq_sis",
                 "cityscapes": "cityscapes_sis"}
# Split names as the builders write them.
TFDS_SPLIT = {"train": "train", "validation": "validation", "test": "test"}


def procedural_config_name(image_size: int, num_train: int, seed: int) -> str:
  """The builder config of one procedural dataset (its size, train count and content seed)."""
  return f"s{int(image_size)}_n{int(num_train)}_seed{int(seed)}"


def dataset_dir(data_dir: str, name: str, config_name: str | None = None) -> str:
  """`<data_dir>/<builder>[/<config>]/<version>`, where TFDS puts a prepared dataset."""
  parts = [BUILDER_NAMES[name]] + ([config_name] if config_name else []) + [VERSION]
  out = data_dir
  for p in parts:
    out = fileio.join(out, p)
  return out


def _split_files(info: dict, split: str) -> list[str]:
  """File names of `split` in a dataset_info.json, e.g. name-train.array_record-00000-of-00002."""
  if info.get("fileFormat", "") != "array_record":
    raise ValueError(f"{info.get('name')}: prepared as {info.get('fileFormat') or 'tfrecord'}, "
                     "not array_record; prepare it again with python -m "
                     "scdm_jax.data.tfds_builders (it writes array_record)")
  for s in info.get("splits", []):
    if s["name"] == split:
      n = len(s.get("shardLengths", []))
      return [f"{info['name']}-{split}.array_record-{k:05d}-of-{n:05d}" for k in range(n)]
  names = [s["name"] for s in info.get("splits", [])]
  raise ValueError(f"{info.get('name')}: no split {split!r} (it has {names})")


def stage(url_dir: str, split: str, cache_dir: str) -> str:
  """Copies one split of a prepared dataset at a URL to a local folder; returns the folder.

  Each split gets its own folder; a finished copy is renamed into place in one step, so a
  process (or a concurrent one on the same machine) finds it whole or not at all. A cached
  copy whose dataset_info.json differs from the URL's (prepared again) is replaced.
  """
  cache_dir = os.path.expanduser(cache_dir or os.path.join("~", ".cache", "scdm_jax", "tfds"))
  local = os.path.join(cache_dir, url_dir.split("://", 1)[1].strip("/"), split)
  info_path = fileio.join(url_dir, "dataset_info.json")
  if not fileio.exists(info_path):
    raise FileNotFoundError(f"data.tfds_data_dir: {url_dir} has no dataset_info.json; prepare "
                            "it first (docs/data.md, 'TFDS')")
  info_bytes = fileio.read_bytes(info_path)
  cached = os.path.join(local, "dataset_info.json")
  if os.path.exists(cached):
    with open(cached, "rb") as f:
      if f.read() == info_bytes:
        return local  # the same prepared dataset: one small read per start
    stale = tempfile.mkdtemp(prefix=f".stale-{split}-", dir=os.path.dirname(local))
    os.rename(local, os.path.join(stale, split))  # prepared again since: copy it afresh
    shutil.rmtree(stale, ignore_errors=True)
  info = json.loads(info_bytes)
  # dataset_info.json last: its presence marks a complete copy.
  files = _split_files(info, split) + ["features.json", "metadata.json", "dataset_info.json"]
  os.makedirs(os.path.dirname(local), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{split}-", dir=os.path.dirname(local))
  try:
    for f in files:
      with open(os.path.join(tmp, f), "wb") as out:
        out.write(fileio.read_bytes(fileio.join(url_dir, f)))
    try:
      os.rename(tmp, local)
    except OSError:
      if not os.path.exists(os.path.join(local, "dataset_info.json")):
        raise  # not a concurrent copy that finished first
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return local


def _png(data: bytes) -> np.ndarray:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im)


class RecordSplit:
  """One split of a prepared dataset: `len`, `names` and `read(i)` by random access."""

  def __init__(self, data_dir: str, name: str, split: str, *, config_name: str | None = None,
               cache_dir: str = ""):
    ds_dir = dataset_dir(data_dir, name, config_name)
    split = TFDS_SPLIT[split]
    if fileio.is_url(ds_dir):
      ds_dir = stage(ds_dir, split, cache_dir)
    if not os.path.exists(os.path.join(ds_dir, "dataset_info.json")):
      raise FileNotFoundError(
          f"data.tfds_data_dir={data_dir!r}: no prepared {name} dataset at {ds_dir}; prepare it "
          f"with python -m scdm_jax.data.tfds_builders --dataset {name} (docs/data.md, 'TFDS')")
    with open(os.path.join(ds_dir, "dataset_info.json"), encoding="utf-8") as f:
      _split_files(json.load(f), split)  # one-line errors: not array_record, no such split
    try:
      with open(os.path.join(ds_dir, "metadata.json"), encoding="utf-8") as f:
        self.names: list[str] = list(json.load(f)["file_names"][split])
    except (OSError, KeyError, ValueError):
      raise ValueError(f"{ds_dir}: no example names in metadata.json; prepare it with python -m "
                       "scdm_jax.data.tfds_builders (docs/data.md, 'TFDS')") from None
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    builder = tfds.builder_from_directory(ds_dir)
    skip = {k: tfds.decode.SkipDecoding() for k in builder.info.features.keys()
            if k != "file_name"}
    self._source = builder.as_data_source(split, decoders=skip)
    if len(self._source) != len(self.names):
      raise ValueError(f"{ds_dir}: split {split} holds {len(self._source)} records but lists "
                       f"{len(self.names)} names; prepare it again")
    self.path = ds_dir

  def __len__(self) -> int:
    return len(self.names)

  def read(self, i: int, *, need_image: bool = True, need_instance: bool = True
           ) -> tuple[bytes | None, np.ndarray, np.ndarray | None]:
    """(image file bytes or None, raw label (H, W), raw instance (H, W) or None) of record i."""
    rec = self._source[int(i)]
    got = rec["file_name"]
    got = got.decode() if isinstance(got, bytes) else str(got)
    if got != self.names[i]:
      raise ValueError(f"{self.path}: record {i} is {got!r}, expected {self.names[i]!r}; the "
                       "files were not written by scdm_jax.data.tfds_builders: prepare it again")
    image = rec["image"] if need_image and "image" in rec else None
    label = _png(rec["label"])
    if label.ndim == 3:
      label = label[..., 0]
    inst = None
    if need_instance and "instance" in rec:
      inst = _png(rec["instance"])
      inst = inst[..., 0] if inst.ndim == 3 else inst
    return image, label, inst
