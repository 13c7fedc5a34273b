"""Atomic file writes: a reader never sees a half-written file, and a crash leaves the old one.

Every file this project writes outside orbax (PNGs, npz weights and statistics, JSON reports,
psi files) goes through `atomic_path`: write to a temporary file in the destination folder,
flush it to disk, then `os.replace` it into place (atomic on POSIX within one filesystem).
A URL destination (`gs://...`) is written to a local temporary file and then uploaded in one
call: object stores publish an object only when its upload is complete. A write that fails
for a reason the user can fix (a full disk, a read-only folder) raises `fileio.WriteError`,
one line naming the destination; the temporary file is removed and the old file kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from scdm_jax.io import fileio


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path next to `path`; on success it replaces `path`, else it is removed.

  The temporary name keeps the extension, so writers that infer the format from it work.
  """
  path = os.fspath(path)
  if fileio.is_url(path):
    with tempfile.TemporaryDirectory(prefix="scdm_upload_") as folder:
      tmp = os.path.join(folder, os.path.basename(path))
      yield tmp
      fileio.upload(tmp, path)
    return
  folder = os.path.dirname(os.path.abspath(path))
  base, ext = os.path.splitext(os.path.basename(path))
  try:
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
  except OSError as e:
    raise fileio.write_error(e, path) from None
  try:
    yield tmp
    with open(tmp, "rb+") as f:  # make the bytes durable before the rename publishes them
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:  # a full disk or a folder made read-only meanwhile: one line
    _discard(tmp)
    raise fileio.write_error(e, path) from None
  except BaseException:
    _discard(tmp)
    raise


def _discard(tmp: str) -> None:
  try:
    if os.path.exists(tmp):
      os.unlink(tmp)
  except OSError:
    pass  # the original error matters more than a leftover temporary file


def write_text(path: str | os.PathLike, text: str) -> None:
  with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    f.write(text)


def write_json(path: str | os.PathLike, obj: Any, **dump_kwargs) -> None:
  write_text(path, json.dumps(obj, **{"indent": 1, **dump_kwargs}) + "\n")


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
  with atomic_path(path) as tmp, open(tmp, "wb") as f:
    np.savez(f, **arrays)


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
  with atomic_path(path) as tmp, open(tmp, "wb") as f:
    np.save(f, array)


def save_image(image, path: str | os.PathLike) -> None:
  """Saves a PIL image; the format comes from `path`'s extension (PNG when there is none)."""
  ext = os.path.splitext(os.fspath(path))[1].lstrip(".").upper() or "PNG"
  with atomic_path(path) as tmp:
    image.save(tmp, format="JPEG" if ext == "JPG" else ext)
