"""Parity of the noisy-label benchmark (DS and Edge) with noisy_benchmark.npz.

For every example `i` in the file (keys `raw_i`), recomputes from `raw_i` alone:
`ds64_i` (Pillow-NEAREST to 64x64), `ds64_up256_i` (back up, nearest), `raw256_i` (the
test-time loader's nearest resize) and `edge_i` (Edge corruption of `raw256_i`, written as
raw value 0 = ADE20K "unlabeled"). Output sizes are read from the reference arrays, so files
with other sizes work too. All comparisons are exact.
"""

from __future__ import annotations

import re

import numpy as np

from scdm_jax import parity
from scdm_jax.data import noisy

# Raw value the reference writes into corrupted ADE20K annotations.
_UNLABELED_RAW = 0


def _indices(data) -> list[int]:
  return sorted(int(m.group(1)) for k in data for m in [re.fullmatch(r"raw_(\d+)", k)] if m)


def check(data) -> list[parity.Comparison]:
  results = []
  for i in _indices(data):
    raw = np.asarray(data[f"raw_{i}"])
    outs = {}
    if f"ds64_{i}" in data:
      outs[f"ds64_{i}"] = noisy.resize_nearest(raw, data[f"ds64_{i}"].shape[:2])
    if f"ds64_up256_{i}" in data:
      small = outs.get(f"ds64_{i}", noisy.resize_nearest(raw, noisy.DS_SIZE))
      outs[f"ds64_up256_{i}"] = noisy.resize_nearest(small, data[f"ds64_up256_{i}"].shape[:2])
    size = None
    for key in (f"raw256_{i}", f"edge_{i}"):
      if key in data:
        size = data[key].shape[:2]
        break
    if size is not None:
      raw_s = noisy.resize_nearest(raw, size)
      if f"raw256_{i}" in data:
        outs[f"raw256_{i}"] = raw_s
      if f"edge_{i}" in data:
        outs[f"edge_{i}"] = noisy.corrupt_edge(raw_s, _UNLABELED_RAW)
    for name, ours in outs.items():
      results.append(parity.compare(name, ours, data[name], exact=True))
  if not results:
    raise ValueError("noisy_benchmark file holds no raw_i with ds64_i/ds64_up256_i/raw256_i/"
                     "edge_i arrays to compare")
  return results
