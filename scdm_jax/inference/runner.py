"""Running one sharded program on a host batch of any size.

A program sharded over the mesh's batch axis needs a leading dimension divisible by the
number of batch shards. `put_padded` pads the host rows with zeros to that size and places
them on the devices; `host_rows` / `local_rows` read the real rows of the output back (all
of them on every host, or only those this process holds, with no gather).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from scdm_jax import sharding


def round_up(n: int, m: int) -> int:
  return -(-int(n) // int(m)) * int(m)


def pad_rows(x: np.ndarray, n: int) -> np.ndarray:
  """`x` with zero rows appended up to `n` rows."""
  x = np.asarray(x)
  if x.shape[0] == n:
    return x
  pad = np.zeros((n - x.shape[0],) + x.shape[1:], x.dtype)
  return np.concatenate([x, pad])


def put_padded(tree: Any, mesh: jax.sharding.Mesh) -> tuple[Any, int]:
  """Pads every array of `tree` (same leading size n; None leaves stay None) to a multiple
  of the batch shards and places it batch-sharded. Returns `(device tree, n)`."""
  leaves = [x for x in jax.tree.leaves(tree) if x is not None]
  if not leaves:
    return tree, 0
  n = int(np.shape(leaves[0])[0])
  total = round_up(n, sharding.num_batch_shards(mesh))
  bsh = sharding.batch_sharding(mesh)
  put = lambda x: sharding.device_put_tree(np.ascontiguousarray(pad_rows(x, total)), bsh)
  return jax.tree.map(put, tree), n


def host_rows(out: jax.Array, n: int) -> np.ndarray:
  """The first `n` rows of a batch-sharded output, as numpy on every host."""
  return sharding.to_host(out)[:n]


def local_rows(out: jax.Array, n: int) -> Iterator[tuple[int, np.ndarray]]:
  """`(row, value)` for the rows < n this process holds (one replica of each)."""
  for shard in out.addressable_shards:
    if shard.replica_id != 0:
      continue
    start = shard.index[0].start or 0
    data = np.asarray(shard.data)
    for r in range(data.shape[0]):
      if start + r < n:
        yield start + r, data[r]
