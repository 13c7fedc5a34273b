"""Generated sample sets on disk and the clean references they are scored against.

`--mode sample` writes `sample_<j>/<name>.png`; `find_sample_sets` finds those folders,
`load_images` reads them (resizing with Pillow BICUBIC when needed), and `load_reference`
reads the matching real images and clean label ids of a split (label noise switched off:
mIoU is always against the clean label, as SCDM measures it).
"""

from __future__ import annotations

import io
import os
import re

import ml_collections
import numpy as np
from PIL import Image

from scdm_jax.data import datasets
from scdm_jax.io import fileio

_SET_RE = re.compile(r"^sample_(\d+)$")


def png_names(folder: str) -> list[str]:
  """The stems of the PNG files in `folder` (a sample set), sorted."""
  return sorted(os.path.splitext(f)[0] for f in fileio.listdir(folder)
                if f.lower().endswith(".png"))


def find_sample_sets(samples_dir: str) -> list[str]:
  """The sample-set folders (``sample_0``, ``sample_1``, ... in order), or the folder itself."""
  if not fileio.isdir(samples_dir):
    raise FileNotFoundError(
        f"Sample folder not found: {samples_dir}. Write samples with --mode sample (they go "
        "to config.sample.output_dir or <workdir>/samples) or set config.eval.samples_dir.")
  sets = sorted(((int(m.group(1)), d) for d in fileio.listdir(samples_dir)
                 if (m := _SET_RE.match(d)) and fileio.isdir(os.path.join(samples_dir, d))))
  if sets:
    if sets[0][0] != 0:
      raise FileNotFoundError(f"{samples_dir} has sample sets {[d for _, d in sets]} but no "
                              "sample_0/.")
    folders = [os.path.join(samples_dir, d) for _, d in sets]
  else:
    folders = [samples_dir]
  if not png_names(folders[0]):
    raise FileNotFoundError(f"No .png files in {folders[0]} (expected generated images, e.g. "
                            "from --mode sample).")
  return folders


def load_images(folder: str, names: list[str], size: int) -> tuple[np.ndarray, bool]:
  """(N, size, size, 3) float32 in [-1, 1] from ``folder/<name>.png``; second value: whether
  any image had to be resized."""
  out = np.empty((len(names), size, size, 3), np.float32)
  resized = False
  for i, name in enumerate(names):
    path = os.path.join(folder, name + ".png")
    try:
      with Image.open(io.BytesIO(fileio.read_bytes(path))) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
          im = im.resize((size, size), Image.BICUBIC)
          resized = True
        out[i] = np.asarray(im, np.float32) / 127.5 - 1.0
    except FileNotFoundError:
      raise
    except Exception as e:  # Truncated or non-image file.
      raise ValueError(f"Cannot read generated image {path} ({type(e).__name__}: {e}).") from e
  return out, resized


def load_reference(config: ml_collections.ConfigDict, split: str, names: list[str],
                   ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray]:
  """Clean reference images (N, S, S, 3) and label ids (N, S, S) for ``names``, in order.

  Label noise is switched off (mIoU is against the clean label); absorbing all-zero pixels
  and the dataset's unlabeled class become ``ignore_index``.
  """
  data = ml_collections.ConfigDict(config.data.to_dict())
  data.noise = "none"
  data.label_dir = ""
  unl = None
  try:
    unl = datasets.class_table(data).unlabeled_class
  except (ValueError, FileNotFoundError, KeyError):
    pass
  want = set(names)
  found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
  it = datasets.create_dataset(data, split, batch_size=32, train=False, seed=0,
                               with_names=True)
  for batch in it:
    for j, raw in enumerate(batch["name"]):
      name = raw.decode() if isinstance(raw, bytes) else str(raw)
      if name in want:
        ids = batch["label"][j].astype(np.int32)
        ids[ids < 0] = ignore_index
        if unl is not None:
          ids[ids == unl] = ignore_index
        found[name] = (batch["image"][j], ids)
    if len(found) == len(want):
      break
  missing = [n for n in names if n not in found]
  if missing:
    raise ValueError(
        f"{len(missing)} generated image(s) have no reference of the same name in split "
        f"{split!r} of {config.data.name!r} (first: {missing[:3]}). Sample from that split "
        "(config.sample.source) or set config.eval.split.")
  return (np.stack([found[n][0] for n in names]).astype(np.float32),
          np.stack([found[n][1] for n in names]))
