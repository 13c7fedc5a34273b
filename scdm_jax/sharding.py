"""Meshes and shardings: the ONLY module that builds a mesh or a `NamedSharding`.

The mesh has two axes, `("data", "fsdp")`, spanning every device of every process:

* the batch is split over both axes together (`P(("data", "fsdp"))`), so all devices do
  data parallelism whatever the split;
* parameters and optimizer state are replicated, except arrays with at least
  `fsdp_min_size` elements, which are split along their largest dimension divisible by
  the `fsdp` axis size (ZeRO-3 / FSDP style: XLA all-gathers them for the forward pass
  and reduce-scatters their gradients).

With `mesh.fsdp = 1` (the default) this is plain data parallelism with replicated state.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

DATA_AXES = ("data", "fsdp")
BATCH_SPEC = P(DATA_AXES)


def mesh_shape(mesh_config: Mapping[str, Any] | Any, num_devices: int) -> tuple[int, int]:
  """Resolves `(data, fsdp)` sizes; one of them may be -1 (fill with the rest).

  Raises:
    ValueError: if the sizes do not multiply to `num_devices`.
  """
  get = mesh_config.get if isinstance(mesh_config, Mapping) else (
      lambda k, d=None: getattr(mesh_config, k, d))
  data, fsdp = int(get("data", -1)), int(get("fsdp", 1))
  if data == -1 and fsdp == -1:
    raise ValueError("config.mesh: at most one of mesh.data / mesh.fsdp may be -1.")
  if data == -1:
    if num_devices % fsdp:
      raise ValueError(f"config.mesh.fsdp={fsdp} does not divide the {num_devices} devices; "
                       "choose a divisor or set it to -1.")
    data = num_devices // fsdp
  elif fsdp == -1:
    if num_devices % data:
      raise ValueError(f"config.mesh.data={data} does not divide the {num_devices} devices; "
                       "choose a divisor or set it to -1.")
    fsdp = num_devices // data
  if data * fsdp != num_devices or data < 1 or fsdp < 1:
    raise ValueError(f"config.mesh data={data} x fsdp={fsdp} must equal the number of "
                     f"devices ({num_devices}); use -1 for one of them to fill in.")
  return data, fsdp


def make_mesh(mesh_config: Mapping[str, Any] | Any,
              devices: list[jax.Device] | None = None) -> jax.sharding.Mesh:
  """Builds the `("data", "fsdp")` mesh over all devices of all processes.

  Args:
    mesh_config: `config.mesh` (fields `data`, `fsdp`; -1 = fill in).
    devices: Optional explicit device list (tests); default `jax.devices()`.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  axis_types = (jax.sharding.AxisType.Auto,) * 2
  if devices == list(jax.devices()):
    # jax.make_mesh orders devices for the physical topology (ICI rings on TPU).
    return jax.make_mesh(shape, DATA_AXES, axis_types=axis_types)
  return jax.make_mesh(shape, DATA_AXES, axis_types=axis_types, devices=devices)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sharding of a global batch: leading axis over every device."""
  return NamedSharding(mesh, BATCH_SPEC)


def num_batch_shards(mesh: jax.sharding.Mesh) -> int:
  return math.prod(mesh.shape[a] for a in DATA_AXES)


def param_spec(shape: tuple[int, ...], fsdp_size: int, fsdp_min_size: int) -> P:
  """FSDP rule for one array: shard the largest divisible dim, or replicate."""
  if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < fsdp_min_size:
    return P()
  # Largest dimension first; ties go to the last one (the output-feature dim of a kernel).
  order = sorted(range(len(shape)), key=lambda i: (shape[i], i), reverse=True)
  for i in order:
    if shape[i] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[i] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(mesh: jax.sharding.Mesh, abstract_tree: Any,
                    fsdp_min_size: int = 2**18) -> Any:
  """`NamedSharding` for every leaf of a pytree of arrays / ShapeDtypeStructs."""
  fsdp_size = mesh.shape["fsdp"]

  def one(x):
    shape = tuple(getattr(x, "shape", ()))
    return NamedSharding(mesh, param_spec(shape, fsdp_size, fsdp_min_size))

  return jax.tree.map(one, abstract_tree)


def check_global_batch(global_batch_size: int, mesh: jax.sharding.Mesh,
                       grad_accum: int = 1) -> tuple[int, int]:
  """Validates the batch split; returns `(per_process_batch, micro_batch)`.

  Raises:
    ValueError: if the global batch does not split evenly.
  """
  shards = num_batch_shards(mesh)
  if global_batch_size % grad_accum:
    raise ValueError(f"config.train.batch_size={global_batch_size} is not divisible by "
                     f"config.train.grad_accum={grad_accum}.")
  micro = global_batch_size // grad_accum
  if micro % shards:
    raise ValueError(
        f"The micro-batch (config.train.batch_size / grad_accum = {micro}) must be divisible "
        f"by the number of devices ({shards}); change batch_size or grad_accum.")
  if global_batch_size % jax.process_count():
    raise ValueError(f"config.train.batch_size={global_batch_size} must be divisible by "
                     f"the number of processes ({jax.process_count()}).")
  return global_batch_size // jax.process_count(), micro


def to_global(local_batch: Mapping[str, Any], mesh: jax.sharding.Mesh) -> dict[str, Any]:
  """Turns each process's slice of the batch into global `jax.Array`s.

  Every process passes its own `(b, ...)` numpy arrays (b = global batch / processes);
  the result has the global leading dimension, sharded over all devices. Non-numeric
  leaves (e.g. file names as bytes) are dropped.
  """
  sharding = batch_sharding(mesh)
  out = {}
  for key, value in local_batch.items():
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
      continue
    out[key] = jax.make_array_from_process_local_data(sharding, arr)
  return out


def to_global_replicated(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places host values (identical on every process) replicated on the mesh."""
  sharding = replicated(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def device_put_tree(tree: Any, shardings: Any) -> Any:
  """Puts host arrays (identical on every process) into the given shardings."""
  def put(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
  return jax.tree.map(put, tree, shardings)


def to_host(x: jax.Array) -> np.ndarray:
  """Fetches a (possibly multi-process) array to every host as numpy."""
  if jax.process_count() > 1 and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)
