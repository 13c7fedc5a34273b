"""Paths that may be local or URLs on an object store (`gs://bucket/run`, `s3://...`).

TPU pods keep the workdir on GCS. Local paths go through `os`; URLs go through
`etils.epath`, which orbax already depends on (it uses `tf.io.gfile` when TensorFlow is
installed, fsspec otherwise), so the model, sampler and exporter need no TensorFlow here.
"""

from __future__ import annotations

import os


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


def join(folder: str, name: str) -> str:
  """`os.path.join` that also works on URLs (always '/')."""
  return f"{folder.rstrip('/')}/{name}" if is_url(folder) else os.path.join(folder, name)
