"""Paths that may be local or URLs on an object store (`gs://bucket/run`, `s3://...`).

TPU pods keep the workdir on GCS. Local paths go through `os`; URLs go through
`etils.epath`, which orbax already depends on (it uses `tf.io.gfile` when TensorFlow is
installed, fsspec otherwise), so the model, sampler and exporter need no TensorFlow here.
"""

from __future__ import annotations

import errno
import os
import tempfile


def is_url(path: str | os.PathLike) -> bool:
  return "://" in os.fspath(path)


def _epath(path: str):
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(path)


def absolute(path: str | os.PathLike) -> str:
  """`os.path.abspath` for local paths; URLs are returned unchanged."""
  path = os.fspath(path)
  return path if is_url(path) else os.path.abspath(path)


def exists(path: str | os.PathLike) -> bool:
  path = os.fspath(path)
  return _epath(path).exists() if is_url(path) else os.path.exists(path)


def isdir(path: str | os.PathLike) -> bool:
  path = os.fspath(path)
  return _epath(path).is_dir() if is_url(path) else os.path.isdir(path)


def makedirs(path: str | os.PathLike) -> None:
  path = os.fspath(path)
  if is_url(path):
    _epath(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def listdir(path: str | os.PathLike) -> list[str]:
  """Entry names (not paths), sorted."""
  path = os.fspath(path)
  if is_url(path):
    return sorted(p.name for p in _epath(path).iterdir())
  return sorted(os.listdir(path))


def walk_files(path: str | os.PathLike) -> list[str]:
  """Paths of every file under a folder (recursively), sorted; URLs through epath."""
  path = os.fspath(path)
  if is_url(path):
    base = _epath(path)
    out = []
    for d, _, files in base.walk():  # one listing per folder (gfile.walk / fsspec)
      rel = d.relative_to(base).as_posix()
      folder = path if rel == "." else join(path, rel)
      out += [join(folder, f) for f in files]
    return sorted(out)
  return sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files)


def read_bytes(path: str | os.PathLike) -> bytes:
  path = os.fspath(path)
  if is_url(path):
    return _epath(path).read_bytes()
  with open(path, "rb") as f:
    return f.read()


def remove(path: str | os.PathLike) -> None:
  """Deletes a file; a missing one is not an error (another process may have removed it)."""
  path = os.fspath(path)
  if is_url(path):
    _epath(path).unlink(missing_ok=True)
  else:
    try:
      os.remove(path)
    except FileNotFoundError:
      pass


def upload(local_file: str, url: str) -> None:
  """Copies a finished local file to `url` in one write. An object store publishes an
  object only when its upload completes, so readers never see a partial file."""
  dst = _epath(url)
  dst.parent.mkdir(parents=True, exist_ok=True)
  with open(local_file, "rb") as f:
    dst.write_bytes(f.read())


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def list_images(path: str, what: str, extensions: tuple[str, ...] = (".png",)) -> list[str]:
  """The image files of `path`: the file itself, or a folder's files with `extensions`, sorted.

  Args:
    path: a file or folder (local or URL).
    what: the config key the path came from, for the error (e.g. "config.sample.source").
    extensions: lower-case file endings to keep.

  Raises:
    FileNotFoundError: the path does not exist, or the folder holds no such file.
  """
  if isdir(path):
    files = [join(path, f) for f in listdir(path) if f.lower().endswith(extensions)]
    if not files:
      raise FileNotFoundError(f"{what}={path!r}: the folder has no {'/'.join(extensions)} "
                              "files")
    return files
  if not exists(path):
    raise FileNotFoundError(f"{what}={path!r} does not exist (expected an image file or a "
                            "folder of images)")
  return [path]


def join(folder: str, *names: str) -> str:
  """`os.path.join` that also works on URLs (always '/')."""
  if not is_url(folder):
    return os.path.join(folder, *names)
  for name in names:
    folder = f"{folder.rstrip('/')}/{name}"
  return folder


def match_by_name(inputs: list[str], path: str, what: str, of: str) -> list[str]:
  """The companion file of each input: `path` itself for all, or the folder's same-stem image.

  Args:
    inputs: the files the companions belong to (guides, sources).
    path: one file shared by every input, or a folder holding `<stem>.png/.jpg` per input.
    what: the config key, for the errors (e.g. "config.edit.mask").
    of: what an input is called, for the errors (e.g. "guide").

  Raises:
    FileNotFoundError: `path` does not exist, or the folder lacks an input's file.
  """
  if not isdir(path):
    if not exists(path):
      raise FileNotFoundError(f"{what}={path!r} does not exist")
    return [path] * len(inputs)
  out = []
  for name in inputs:
    stem = os.path.splitext(os.path.basename(name))[0]
    found = [c for c in (join(path, stem + e) for e in IMAGE_EXTENSIONS) if exists(c)]
    if not found:
      raise FileNotFoundError(f"{what}={path!r} has no {stem}.png/.jpg for the {of} {name}; "
                              f"name each file after its {of}")
    out.append(found[0])
  return out


class WriteError(OSError):
  """A file or folder could not be written (a full disk, a read-only or foreign folder).

  Its message is one line: the path, the reason and what to do (main.py prints it as is).
  """

  def __str__(self) -> str:
    return str(self.strerror)


# errno -> (reason, what to do) for the failures a user can fix.
_FREE_SPACE = "free some space there (or write elsewhere) and run again"
_MAKE_WRITABLE = "make the folder writable for this user or choose another one"
_IN_THE_WAY = ("a file of that name is in the way", "remove it or choose another path")
_WRITE_FAILURES = {
    errno.ENOSPC: ("the disk is full", _FREE_SPACE),
    errno.EDQUOT: ("the disk quota is used up", _FREE_SPACE),
    errno.EFBIG: ("the file is too large for that file system", "write elsewhere"),
    errno.EROFS: ("the file system is read-only", "choose a writable folder"),
    errno.EACCES: ("permission denied", _MAKE_WRITABLE),
    errno.EPERM: ("operation not permitted", _MAKE_WRITABLE),
    errno.EEXIST: _IN_THE_WAY,
    errno.ENOTDIR: _IN_THE_WAY,
}


def is_write_failure(err: BaseException | None, message: str = "") -> bool:
  """Whether `err` (or, without one, a logged `message`) is a failure `write_error` turns
  into one line: a full disk, a read-only folder and the like."""
  if isinstance(err, OSError):
    return err.errno in _WRITE_FAILURES
  return any(f"[Errno {n}] {os.strerror(n)}" in message for n in _WRITE_FAILURES)


def write_error(err: OSError, path: str | os.PathLike, what: str = "") -> OSError:
  """`err` as a one-line `WriteError` about `path` (`what`: e.g. "--workdir"), or `err`
  itself when it is not a failure a user can fix (those keep their traceback)."""
  if isinstance(err, WriteError) or err.errno not in _WRITE_FAILURES:
    return err
  reason, todo = _WRITE_FAILURES[err.errno]
  if err.strerror and err.strerror != os.strerror(err.errno):
    reason = f"{reason} ({err.strerror})"  # our own detail, e.g. the space a save needs
  where = f"{what}={os.fspath(path)!r}" if what else os.fspath(path)
  detail = f" (at {err.filename})" if err.filename and os.fspath(err.filename) != \
      os.fspath(path) else ""
  return WriteError(err.errno, f"cannot write {where}: {reason}{detail}; {todo}.")


def check_writable(folder: str | os.PathLike, what: str) -> None:
  """Writes (then removes) a probe file in `folder`, or in its nearest existing parent when
  it does not exist yet (nothing is created), so a read-only or full output folder fails
  before any work, in one line.

  URLs are not probed (object stores have no folders; their errors come at the write).

  Raises:
    WriteError: naming `what` (the flag or config key) and the folder.
  """
  folder = os.fspath(folder)
  if is_url(folder):
    return
  probe_dir = os.path.abspath(folder)
  while not os.path.exists(probe_dir) and os.path.dirname(probe_dir) != probe_dir:
    probe_dir = os.path.dirname(probe_dir)
  try:
    if not os.path.isdir(probe_dir):
      raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), probe_dir)
    fd, probe = tempfile.mkstemp(prefix=".write_check.", dir=probe_dir)
    try:
      os.write(fd, b"scdm_jax")  # a full disk may still accept an empty file
    finally:
      os.close(fd)
      os.unlink(probe)
  except OSError as e:
    raise write_error(e, folder, what) from None
