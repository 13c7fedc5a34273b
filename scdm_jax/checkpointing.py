"""Checkpoints: the ONLY module that imports orbax.

Two kinds of checkpoint live here:

* **Training checkpoints** (`TrainCheckpointer`): an orbax v0 `CheckpointManager` in
  `<workdir>/checkpoints/<step>/`, each step a `Composite` of
  - `state`: a pytree of arrays (params, EMA params, optimizer state, step, RNG key data,
    data position) saved with `StandardSave`, restored into an abstract target so every
    array comes back directly in its (possibly FSDP-sharded) `NamedSharding`;
  - `meta`: JSON (`JsonSave`): the run config, the class table and anything else that is
    not an array.
  Orbax writes each step into a temporary directory and renames it when complete, so a
  killed run never leaves a half-written step that `latest_step()` would pick up.
  Retention: the last `keep_last` steps plus every step divisible by `keep_every`.

* **Inference checkpoints** (`save_export` / `load_export`): one directory holding
  `params` (a nested dict of arrays, e.g. `nnx.to_pure_dict(nnx.state(model, nnx.Param))`)
  and `meta` (JSON: at least `{"model": {UNetConfig fields}, "num_classes", "class_names",
  "source"}`). Written by `python -m scdm_jax.convert` and by `--mode export`; read by the
  sampler.

Keeping orbax behind this one module means a move to the orbax v1 API touches one file.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from scdm_jax.io import fileio

_PARAMS = "params"
_META = "meta"
_STATE = "state"


def _abs_path(directory: str | os.PathLike) -> str:
  """Orbax wants absolute paths; `gs://...` URLs stay untouched."""
  return fileio.absolute(directory)


# ---------------------------------------------------------------------------
# Inference checkpoints (cross-part contract, see docs/architecture.md)
# ---------------------------------------------------------------------------


def save_export(directory: str | os.PathLike, params: Mapping[str, Any],
                meta: Mapping[str, Any]) -> str:
  """Writes an inference checkpoint (params + JSON meta) atomically.

  Orbax writes into a temporary sibling directory and renames it once every file is
  complete. An existing checkpoint at `directory` is replaced.

  Args:
    directory: Target directory (created; its parent must be writable).
    params: Nested dict of arrays (numpy or jax), e.g.
      `nnx.to_pure_dict(nnx.state(model, nnx.Param))`.
    meta: JSON-serialisable dict, at least `{"model": {...UNetConfig fields...},
      "num_classes": K, "source": "..."}`; `class_names` is optional.

  Returns:
    The absolute path written.
  """
  path = _abs_path(directory)
  meta = dict(meta)
  if "model" not in meta:
    raise ValueError(
        f"save_export({path!r}): meta must contain a 'model' entry with the UNetConfig "
        f"fields; got keys {sorted(meta)}.")
  # Orbax's StandardSave wants arrays; numpy leaves are fine. Scalars become 0-d arrays.
  # jax.Arrays (possibly sharded over hosts) are saved as they are; anything else -> numpy.
  params = jax.tree.map(lambda x: np.asarray(x) if _is_host_leaf(x) else x, dict(params))
  with ocp.Checkpointer(
      ocp.CompositeCheckpointHandler(handler_registry=_export_registry())) as ckptr:
    ckptr.save(
        path,
        args=ocp.args.Composite(**{
            _PARAMS: ocp.args.StandardSave(params),
            _META: ocp.args.JsonSave(meta),
        }),
        force=True)
  logging.info("Wrote inference checkpoint %s", path)
  return path


def _is_host_leaf(x: Any) -> bool:
  return not isinstance(x, jax.Array)


def _export_registry() -> Any:
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  for args_cls in (ocp.args.StandardSave, ocp.args.StandardRestore):
    registry.add(_PARAMS, args_cls, ocp.StandardCheckpointHandler)
  for args_cls in (ocp.args.JsonSave, ocp.args.JsonRestore):
    registry.add(_META, args_cls, ocp.JsonCheckpointHandler)
  return registry


def load_export(directory: str | os.PathLike,
                target: Any | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads an inference checkpoint written by `save_export`.

  Args:
    directory: The checkpoint directory.
    target: Optional abstract pytree (e.g. of `jax.ShapeDtypeStruct` with shardings) to
      restore into; without it the params come back as host numpy arrays.

  Returns:
    `(params, meta)`: nested dict of arrays and the JSON meta dict.

  Raises:
    FileNotFoundError: if `directory` does not hold an inference checkpoint.
  """
  path = _abs_path(directory)
  params_dir = os.path.join(path, _PARAMS)
  meta_dir = os.path.join(path, _META)
  if not fileio.isdir(params_dir) or not fileio.exists(meta_dir):
    raise FileNotFoundError(
        f"{path!r} is not an inference checkpoint (expected sub-directories "
        f"'{_PARAMS}/' and '{_META}' written by scdm_jax.checkpointing.save_export, e.g. "
        "by `python -m scdm_jax.main --mode export` or `python -m scdm_jax.convert`).")
  with ocp.Checkpointer(
      ocp.CompositeCheckpointHandler(handler_registry=_export_registry())) as ckptr:
    if target is None:
      # Host numpy arrays: restore into numpy placeholders built from the metadata.
      tree_meta = ckptr.metadata(path).item_metadata[_PARAMS]
      tree_meta = getattr(tree_meta, "tree", tree_meta)
      target = jax.tree.map(lambda m: np.empty(m.shape, m.dtype), tree_meta)
    restored = ckptr.restore(
        path, args=ocp.args.Composite(**{
            _PARAMS: ocp.args.StandardRestore(target),
            _META: ocp.args.JsonRestore(),
        }))
  params, meta = restored[_PARAMS], restored[_META]
  return params, dict(meta)


# ---------------------------------------------------------------------------
# Training checkpoints
# ---------------------------------------------------------------------------


class TrainCheckpointer:
  """Orbax `CheckpointManager` for the training state (see module docstring).

  Attributes:
    directory: Absolute checkpoint root (`<workdir>/checkpoints`).
  """

  def __init__(self, directory: str | os.PathLike, *, keep_last: int = 3,
               keep_every: int | None = None, async_save: bool = True):
    """Opens (or creates) the checkpoint root.

    Args:
      directory: Checkpoint root; created if missing.
      keep_last: Number of most recent steps kept.
      keep_every: Additionally keep every step divisible by this (None/0: off).
      async_save: Write in a background thread (the train loop keeps going). `save`
        with `wait=True` or `close()` blocks until the write is committed.
    """
    self.directory = _abs_path(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep_last if keep_last and keep_last > 0 else None,
        keep_period=keep_every if keep_every and keep_every > 0 else None,
        create=True,
        enable_async_checkpointing=async_save,
        # Stale tmp directories of a killed write are removed on start.
        cleanup_tmp_directories=True,
    )
    self._mngr = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={_STATE: ocp.StandardCheckpointHandler(),
                       _META: ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    """The newest fully written step, or None."""
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def save(self, step: int, state: Any, meta: Mapping[str, Any], *,
           wait: bool = False) -> bool:
    """Saves `state` (pytree of arrays) and `meta` (JSON) as `step`.

    Args:
      step: Training step (the number of optimizer updates done).
      state: Pytree of `jax.Array`/numpy leaves.
      meta: JSON-serialisable dict.
      wait: Block until the checkpoint is committed on disk.

    Returns:
      Whether a save was started (False if `step` already exists).
    """
    if step in self._mngr.all_steps():
      return False
    saved = self._mngr.save(
        step,
        args=ocp.args.Composite(**{
            _STATE: ocp.args.StandardSave(state),
            _META: ocp.args.JsonSave(dict(meta)),
        }),
        force=True)
    if wait:
      self._mngr.wait_until_finished()
    return saved

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores `step` into the structure/shardings of `abstract_state`.

    Args:
      step: A step listed by `all_steps()`.
      abstract_state: Pytree of `jax.ShapeDtypeStruct` (with `.sharding`) or arrays.

    Returns:
      `(state, meta)`.
    """
    legacy = self._empty_entries_on_disk(step, abstract_state)
    target = dict(abstract_state, **{k: {} for k in legacy}) if legacy else abstract_state
    restored = self._mngr.restore(
        step,
        args=ocp.args.Composite(**{
            _STATE: ocp.args.StandardRestore(target),
            _META: ocp.args.JsonRestore(),
        }))
    state = restored[_STATE]
    if legacy:
      state = {k: v for k, v in state.items() if k not in legacy}
    return state, dict(restored[_META])

  def _empty_entries_on_disk(self, step: int, abstract_state: Any) -> list[str]:
    """Top-level entries of the saved state that hold no arrays and that `abstract_state`
    lacks: checkpoints written before `TrainState.rest` was dropped hold an empty "rest".
    Restoring them as `{}` keeps those checkpoints loadable (and resumable)."""
    if not isinstance(abstract_state, Mapping):
      return []
    tree = self._mngr.item_metadata(step)[_STATE]
    tree = getattr(tree, "tree", tree)
    if not isinstance(tree, Mapping):
      return []
    return [k for k, v in tree.items()
            if k not in abstract_state and isinstance(v, Mapping) and not jax.tree.leaves(v)]

  def restore_meta(self, step: int) -> dict[str, Any]:
    """Reads only the JSON meta of `step`."""
    restored = self._mngr.restore(
        step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()}))
    return dict(restored[_META])

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()
