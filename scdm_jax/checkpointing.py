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

A write that fails for a reason the user can fix (a full disk, a read-only folder) raises
`fileio.WriteError` (one line naming the step and the steps kept); orbax's temporary folder
is removed and the older steps stay as they were. A local export is written next to its
target and swapped in, so a failed export keeps the previous one.

Keeping orbax behind this one module means a move to the orbax v1 API touches one file.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import time
from typing import Any, Callable, Mapping

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
  # Locally, one process: write a fresh sibling and swap it in, so a failed write (a full
  # disk) keeps the previous export; orbax's force=True would delete it first.
  swap = not fileio.is_url(path) and jax.process_count() == 1
  written = f"{path}.new-{os.getpid()}" if swap else path
  try:
    with ocp.Checkpointer(
        ocp.CompositeCheckpointHandler(handler_registry=_export_registry())) as ckptr:
      ckptr.save(
          written,
          args=ocp.args.Composite(**{
              _PARAMS: ocp.args.StandardSave(params),
              _META: ocp.args.JsonSave(meta),
          }),
          force=True)
    if swap:
      _swap_in(written, path)
  except OSError as e:
    if swap:
      _remove_partial(glob.glob(glob.escape(written) + "*"))
    else:
      _remove_partial(glob.glob(glob.escape(path) + ".orbax-checkpoint-tmp*"))
    raise fileio.write_error(e, path) from None
  logging.info("Wrote inference checkpoint %s", path)
  return path


def _swap_in(written: str, path: str) -> None:
  """Moves the finished `written` folder to `path`, replacing what was there."""
  old = f"{path}.old-{os.getpid()}"
  if os.path.exists(path):
    os.replace(path, old)
  os.replace(written, path)
  shutil.rmtree(old, ignore_errors=True)


def _remove_partial(folders: list[str], settle: float = 0.0) -> None:
  """Removes what a failed write left (orbax keeps its temporary folder on an error).

  With `settle`, removes again until the folders stay gone for that many seconds (at most
  ~20 s): writes of a background save still in flight may recreate them.
  """
  deadline = time.monotonic() + 20.0
  while True:
    for folder in folders:
      shutil.rmtree(folder, ignore_errors=True)
    if settle <= 0 or time.monotonic() > deadline:
      break
    time.sleep(settle)
    if not any(os.path.exists(f) for f in folders):
      break
  for folder in folders:
    if os.path.exists(folder):
      logging.warning("Could not remove the partial checkpoint folder %s; delete it by hand "
                      "(the next start removes it too).", folder)


def _with_kept(err: OSError, kept: list[int]) -> OSError:
  """Adds which steps are still on disk to a one-line write error."""
  if not isinstance(err, fileio.WriteError):
    return err
  note = f" Steps kept: {kept}." if kept else " No earlier step is on disk."
  return fileio.WriteError(err.errno, err.strerror + note)


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


def load_export_meta(directory: str | os.PathLike) -> dict[str, Any]:
  """The JSON meta of an inference checkpoint alone, without reading its weights.

  Callers use it to build the restore target (shapes, dtypes) before `load_export`.

  Raises:
    FileNotFoundError: `directory` lacks `params/` or `meta/`.
    ValueError: the meta is not a JSON object.
  """
  path = _abs_path(directory)
  if not fileio.isdir(os.path.join(path, _PARAMS)) or not fileio.exists(
      os.path.join(path, _META)):
    raise FileNotFoundError(f"{path}: not a complete export (needs {_PARAMS}/ and {_META}/, "
                            "as save_export writes)")
  try:
    with ocp.Checkpointer(
        ocp.CompositeCheckpointHandler(handler_registry=_export_registry())) as ckptr:
      meta = ckptr.restore(path, args=ocp.args.Composite(
          **{_META: ocp.args.JsonRestore()}))[_META]
  except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
    raise ValueError(f"{os.path.join(path, _META)}: not valid JSON ({e})") from None
  if not isinstance(meta, Mapping):
    raise ValueError(f"{os.path.join(path, _META)}: not a JSON object")
  return dict(meta)


# ---------------------------------------------------------------------------
# Training checkpoints
# ---------------------------------------------------------------------------


# Room kept free beyond the arrays' bytes (orbax's metadata, the JSON meta, file-system slack).
_SPACE_MARGIN = 16 * 2**20


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
    self._write_failed = False
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
    with self._write_errors(step):
      self._check_free_space(state)
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

  @contextlib.contextmanager
  def _write_errors(self, step: int | None):
    """A failed write (full disk, read-only folder; in a background save it surfaces at the
    next save or wait) becomes one line; orbax's temporary folder is removed, the older
    steps are kept, and `close` does not raise it a second time."""
    try:
      yield
    except OSError as e:
      self._write_failed = True
      self._stop_background()
      _remove_partial(glob.glob(os.path.join(glob.escape(self.directory),
                                             "*.orbax-checkpoint-tmp*")), settle=0.5)
      where = self.directory if step is None else os.path.join(self.directory, str(step))
      kept = self.all_steps_on_disk()
      err = fileio.write_error(e, where)
      raise (err if kept is None else _with_kept(err, kept)) from None

  def _check_free_space(self, state: Any) -> None:
    """Refuses a save the local disk cannot hold, before any byte is written: a background
    save that fills the disk mid-way still ends in the one line, but tensorstore's writes in
    flight then print tracebacks from their threads, which cannot be caught here."""
    if fileio.is_url(self.directory) or jax.process_count() > 1:
      return  # object stores have no free-space figure; hosts each write their own shards
    need = sum(int(np.prod(np.shape(x))) * np.dtype(getattr(x, "dtype", np.float32)).itemsize
               for x in jax.tree.leaves(state))
    free = shutil.disk_usage(self.directory).free
    if free < need + _SPACE_MARGIN:
      raise OSError(errno.ENOSPC, f"{need / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB "
                    "free", self.directory)

  def _stop_background(self) -> None:
    """Lets orbax's other save threads finish and closes the manager, so nothing writes
    into the temporary folder after it is removed (their errors were the one reported)."""
    for stop in (self._mngr.wait_until_finished, self._mngr.close):
      try:
        stop()
      except Exception:  # pylint: disable=broad-except  # the same failure, already reported
        pass

  def all_steps_on_disk(self) -> list[int] | None:
    """Finished step folders, read from the folder itself (orbax's view may be stale)."""
    try:
      return sorted(int(n) for n in os.listdir(self.directory) if n.isdigit())
    except OSError:
      return None

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

  def restore_newest_readable(
      self, abstract_state: Any,
      check_meta: Callable[[int, dict[str, Any]], None] | None = None,
      steps: list[int] | None = None) -> tuple[int, Any, dict[str, Any]] | None:
    """Restores the newest step that reads back completely; None without any step.

    A step whose files are missing (an empty folder, a deleted `_METADATA`), whose meta
    is not JSON, or whose arrays do not read back (a truncated or deleted data file) is
    skipped with one warning naming the step and why; the next older step is tried.

    Args:
      abstract_state: as for `restore`.
      check_meta: called as `check_meta(step, meta)` with each step's meta BEFORE its
        arrays are restored; a ValueError it raises (a config mismatch) is passed on,
        not treated as an unreadable step.
      steps: the candidate steps (default: `all_steps()`).

    Returns:
      `(step, state, meta)`.

    Raises:
      ValueError: if there are steps but none of them is readable.
    """
    steps = self.all_steps() if steps is None else sorted(steps)
    if not steps:
      return None
    skipped = []
    for step in reversed(steps):
      try:
        self._check_step_files(step)
        meta = self.restore_meta(step)
      except Exception as e:  # pylint: disable=broad-except  # orbax/json/OS errors alike
        skipped.append(self._skip(step, e))
        continue
      if check_meta is not None:
        check_meta(step, meta)
      try:
        state, _ = self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        skipped.append(self._skip(step, e))
        continue
      self._set_aside([int(r.split()[1].rstrip(":")) for r in skipped])
      return step, state, meta
    raise ValueError(
        f"{self.directory}: no readable checkpoint ({'; '.join(skipped)}). Move that "
        "folder away (or use a new --workdir) to start fresh.")

  def _set_aside(self, steps: list[int]) -> None:
    """Moves unreadable steps to `<root>_unreadable/` (kept for a look, out of the way:
    otherwise `save` would find the step number taken and never rewrite it)."""
    if not steps or fileio.is_url(self.directory):
      return
    aside = self.directory.rstrip("/") + "_unreadable"
    os.makedirs(aside, exist_ok=True)
    for step in steps:
      dest = os.path.join(aside, f"{step}_{int(time.time())}")
      os.replace(os.path.join(self.directory, str(step)), dest)
      logging.warning("Moved unreadable checkpoint step %d to %s.", step, dest)
    self._mngr.reload()

  def _skip(self, step: int, error: Exception) -> str:
    reason = f"step {step}: {type(error).__name__}: {error}".splitlines()[0][:300]
    logging.warning("Checkpoint %s is unreadable, skipping it (%s).",
                    os.path.join(self.directory, str(step)), reason)
    return reason

  def _check_step_files(self, step: int) -> None:
    """The files every committed step has (orbax may still restore without some)."""
    root = os.path.join(self.directory, str(step))
    for rel in (os.path.join(_STATE, "_METADATA"), os.path.join(_META, "metadata")):
      if not fileio.exists(os.path.join(root, rel)):
        raise FileNotFoundError(f"{rel} is missing")

  def restore_meta(self, step: int) -> dict[str, Any]:
    """Reads only the JSON meta of `step`."""
    restored = self._mngr.restore(
        step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()}))
    return dict(restored[_META])

  def wait(self) -> None:
    with self._write_errors(None):
      self._mngr.wait_until_finished()

  def close(self) -> None:
    if self._write_failed:  # already reported and closed: keep the first error
      return
    with self._write_errors(None):
      self._mngr.wait_until_finished()
    self._mngr.close()
