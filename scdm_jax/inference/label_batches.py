"""Batches of label maps to sample from: a dataset split, or your own label PNGs.

`config.sample.source` is either a split name ("validation": read with the data pipeline,
maps named after the source files) or a label PNG / a folder of PNGs (class-id PNGs or
palette-coloured RGB PNGs, `config.sample.label_format`; resized nearest to the model's
image size; local or gs://). Every batch holds class ids (-1 = unknown), never one-hot;
with `data.use_instance` it also holds the edge channel of each map.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import ml_collections
import numpy as np

from scdm_jax.data import datasets
from scdm_jax.data import label_io
from scdm_jax.data import noisy
from scdm_jax.io import fileio


@dataclasses.dataclass
class LabelBatch:
  """`names` (b,) file stems, `label` (b, S, S) int32 ids, `edge` (b, S, S, 1) or None."""
  names: list[str]
  label: np.ndarray
  edge: np.ndarray | None = None

  def arrays(self) -> dict[str, np.ndarray]:
    """The device inputs of `inference.sampler`: {"label"[, "edge"]}."""
    out = {"label": self.label}
    if self.edge is not None:
      out["edge"] = self.edge
    return out

  def __len__(self) -> int:
    return len(self.names)


def is_path(source: str) -> bool:
  """Whether `config.sample.source` names files rather than a dataset split."""
  return os.sep in source or source.lower().endswith(".png") or fileio.exists(source)


def iter_label_batches(config: ml_collections.ConfigDict, batch_size: int
                       ) -> Iterator[LabelBatch]:
  """Yields `LabelBatch`es of at most `batch_size` maps (`config.sample.max_maps` in all)."""
  sc = config.sample
  max_maps = int(sc.max_maps) or None
  source = str(sc.source)
  it = _from_files(config, source, batch_size, max_maps) if is_path(source) else \
      _from_split(config, source, batch_size)
  count = 0
  for batch in it:
    if max_maps is not None and count + len(batch) > max_maps:
      keep = max_maps - count
      batch = LabelBatch(batch.names[:keep], batch.label[:keep],
                         None if batch.edge is None else batch.edge[:keep])
    if not len(batch):
      return
    count += len(batch)
    yield batch
    if max_maps is not None and count >= max_maps:
      return


def _from_split(config, split: str, batch_size: int) -> Iterator[LabelBatch]:
  it = datasets.create_dataset(config.data, split, batch_size=batch_size, train=False,
                               seed=int(config.sample.seed), with_names=True)
  with it:
    for b in it:
      names = [n.decode() if isinstance(n, bytes) else str(n) for n in b["name"]]
      yield LabelBatch(names, b["label"].astype(np.int32), b.get("edge"))


def _from_files(config, source: str, batch_size: int, max_maps: int | None
                ) -> Iterator[LabelBatch]:
  k, size = int(config.data.num_classes), int(config.data.image_size)
  fmt = config.sample.label_format
  palette, dataset = label_io.format_options(fmt, config.data.class_table or config.data.name,
                                             config.data.name)
  files = fileio.list_images(source, "config.sample.source")[:max_maps]
  for i in range(0, len(files), batch_size):
    ids_list, names = [], []
    for path in files[i:i + batch_size]:
      ids, report = label_io.load_label_map(path, num_classes=k, palette=palette,
                                            dataset=dataset, size=size)
      if fmt == "palette" and report.mode != "palette":
        raise ValueError(f"{path}: config.sample.label_format='palette' but the file is a "
                         "single-channel id map; use label_format=ids or auto.")
      ids_list.append(ids.astype(np.int32))
      names.append(os.path.splitext(os.path.basename(path))[0])
    label = np.stack(ids_list)
    edge = None
    if config.data.use_instance:  # user maps: the edges of their label map
      edge = np.stack([noisy.boundary_map(x) for x in label]).astype(np.float32)[..., None]
    yield LabelBatch(names, label, edge)
