"""Fault injection (issue 14, P7): a full disk or a read-only folder during checkpoint,
export and image writes, output folders checked before the work, and kill -9 at several
points of checkpoint writes.

Write failures come from the file system layer: where the tests do not run as root, a real
read-only folder (chmod 0o555); otherwise (root writes anywhere) and for a full disk, the
Python-level file operations under one folder raise the OSError the kernel would
(`_fail_writes_under`). Orbax's array data is written by tensorstore (C++), which the
injection does not reach; orbax's own metadata files (Python) are, and they are written
inside its temporary folder, so the failure still comes mid-save.
"""

import builtins
import errno
import glob
import json
import os

from conftest import load_config
import numpy as np
from PIL import Image
import pytest

from scdm_jax import checkpointing
from scdm_jax.io import atomic
from scdm_jax.io import fileio
from scdm_jax.io import images as image_io
from scdm_jax.modes import evaluate
from scdm_jax.modes import export
from scdm_jax.modes import sample
from scdm_jax.modes import train
from scdm_jax.training import workdir_lock

ROOT = os.geteuid() == 0
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _under(path, root) -> bool:
  path = os.path.abspath(os.fspath(path))
  return path == root or path.startswith(root + os.sep)


def _fail_writes_under(monkeypatch, root, err=errno.ENOSPC, only=None, files_only=False):
  """Writes, creations and renames under `root` raise OSError(err) (as a full or read-only
  file system would); `only` further restricts it to paths containing that text;
  `files_only` leaves os.open/mkdir/rename alone (a file can be created, not filled)."""
  root = os.path.abspath(os.fspath(root))

  def hit(path):
    return _under(path, root) and (only is None or only in os.fspath(path))

  def fail(path):
    raise OSError(err, os.strerror(err), os.fspath(path))

  real_open, real_os_open = builtins.open, os.open
  real_mkdir, real_replace, real_rename = os.mkdir, os.replace, os.rename

  def fake_open(file, mode="r", *a, **k):
    if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") \
        and hit(file):
      fail(file)
    return real_open(file, mode, *a, **k)

  def fake_os_open(path, flags, *a, **k):
    if flags & _WRITE_FLAGS and hit(path):
      fail(path)
    return real_os_open(path, flags, *a, **k)

  def fake_mkdir(path, *a, **k):
    if hit(path):
      fail(path)
    return real_mkdir(path, *a, **k)

  def fake_move(real):
    def move(src, dst, *a, **k):
      if hit(src) or hit(dst):
        fail(dst)
      return real(src, dst, *a, **k)
    return move

  monkeypatch.setattr(builtins, "open", fake_open)
  if files_only:
    return
  monkeypatch.setattr(os, "open", fake_os_open)
  monkeypatch.setattr(os, "mkdir", fake_mkdir)
  monkeypatch.setattr(os, "replace", fake_move(real_replace))
  monkeypatch.setattr(os, "rename", fake_move(real_rename))


def _one_line(err, *needles):
  msg = str(err)
  assert "\n" not in msg and "Traceback" not in msg, msg
  for n in needles:
    assert n in msg, (n, msg)
  return msg


def _leftovers(folder):
  return sorted(glob.glob(os.path.join(glob.escape(str(folder)), "**", "*orbax-checkpoint-tmp*"),
                          recursive=True) +
                glob.glob(os.path.join(glob.escape(str(folder)), "**", ".*.tmp*"),
                          recursive=True))


_REASON = {errno.ENOSPC: "the disk is full", errno.EROFS: "read-only"}


# --- checkpoint saves ----------------------------------------------------------------------


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS], ids=["ENOSPC", "EROFS"])
def test_failed_checkpoint_save_is_one_line_and_keeps_older_steps(tmp_path, monkeypatch, err,
                                                                   async_save):
  root = tmp_path / "checkpoints"
  ck = checkpointing.TrainCheckpointer(root, async_save=async_save)
  ck.save(1, {"w": np.arange(4, dtype=np.float32)}, {"step": 1}, wait=True)
  with monkeypatch.context() as m:
    _fail_writes_under(m, root, err, only="orbax-checkpoint-tmp")
    with pytest.raises(fileio.WriteError) as e:
      ck.save(2, {"w": np.zeros(4, np.float32)}, {"step": 2}, wait=not async_save)
      ck.wait()  # a background save reports here (or at close)
    ck.close()  # the error is not raised a second time
  _one_line(e.value, str(root / "2") if not async_save else str(root), _REASON[err],
            "Steps kept: [1]")
  assert _leftovers(root) == []
  assert sorted(os.listdir(root)) == ["1"]
  again = checkpointing.TrainCheckpointer(root, async_save=False)
  state, meta = again.restore(1, {"w": np.zeros(4, np.float32)})
  np.testing.assert_array_equal(state["w"], np.arange(4))
  assert meta == {"step": 1}
  assert again.save(2, {"w": np.ones(4, np.float32)}, {"step": 2}, wait=True)  # space again
  again.close()


@pytest.mark.skipif(ROOT, reason="root writes into read-only folders; the EROFS case above "
                    "covers it")
def test_checkpoint_into_a_real_read_only_folder(tmp_path):
  root = tmp_path / "checkpoints"
  ck = checkpointing.TrainCheckpointer(root, async_save=False)
  ck.save(1, {"w": np.arange(4, dtype=np.float32)}, {"step": 1}, wait=True)
  os.chmod(root, 0o555)
  try:
    with pytest.raises(fileio.WriteError) as e:
      ck.save(2, {"w": np.zeros(4, np.float32)}, {"step": 2}, wait=True)
    ck.close()
  finally:
    os.chmod(root, 0o755)
  _one_line(e.value, str(root), "permission denied", "Steps kept: [1]")
  assert sorted(os.listdir(root)) == ["1"]


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS], ids=["ENOSPC", "EROFS"])
def test_failed_export_keeps_the_previous_export(tmp_path, monkeypatch, err):
  target = tmp_path / "export"
  checkpointing.save_export(target, {"w": np.ones(3, np.float32)}, {"model": {}, "step": 4})
  with monkeypatch.context() as m:
    _fail_writes_under(m, tmp_path, err, only="export.")
    with pytest.raises(fileio.WriteError) as e:
      checkpointing.save_export(target, {"w": np.zeros(3, np.float32)},
                                {"model": {}, "step": 6})
  _one_line(e.value, str(target), _REASON[err])
  assert sorted(os.listdir(tmp_path)) == ["export"]  # no temporary or partial sibling
  params, meta = checkpointing.load_export(target)
  np.testing.assert_array_equal(params["w"], np.ones(3))
  assert meta["step"] == 4
  # And a good export still replaces it.
  checkpointing.save_export(target, {"w": np.zeros(3, np.float32)}, {"model": {}, "step": 6})
  assert checkpointing.load_export(target)[1]["step"] == 6
  assert sorted(os.listdir(tmp_path)) == ["export"]


# --- sample / report writes (the atomic writer) ---------------------------------------------


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS], ids=["ENOSPC", "EROFS"])
@pytest.mark.parametrize("kind", ["png", "json"])
def test_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch, err, kind):
  out = tmp_path / "samples" / "sample_0"
  path = str(out / ("a.png" if kind == "png" else "report.json"))
  old = np.full((4, 4, 3), 7, np.uint8)
  if kind == "png":
    image_io.save_png(path, old)
  else:
    atomic.write_json(path, {"v": 1})
  with monkeypatch.context() as m:
    # The temporary file is created, then the write into it fails, as on a filling disk.
    _fail_writes_under(m, out, err, only=".tmp", files_only=True)
    with pytest.raises(fileio.WriteError) as e:
      if kind == "png":
        image_io.save_png(path, np.zeros((4, 4, 3), np.uint8))
      else:
        atomic.write_json(path, {"v": 2})
  _one_line(e.value, path, _REASON[err])
  assert os.listdir(out) == [os.path.basename(path)]  # the temporary file is gone
  if kind == "png":
    np.testing.assert_array_equal(np.asarray(Image.open(path)), old)
  else:
    assert json.load(open(path, encoding="utf-8")) == {"v": 1}


# --- output folders checked before the work ------------------------------------------------


def _unwritable(monkeypatch, folder):
  """`folder` cannot be written: chmod 0o555 where that binds, EROFS injected as root."""
  os.makedirs(folder, exist_ok=True)
  if ROOT:
    _fail_writes_under(monkeypatch, folder, errno.EROFS)
    return lambda: None
  os.chmod(folder, 0o555)
  return lambda: os.chmod(folder, 0o755)


def _expect_write_error(run, needle, folder):
  with pytest.raises(fileio.WriteError) as e:
    run()
  return _one_line(e.value, needle, str(folder))


def test_train_checks_the_workdir_first(tmp_path, monkeypatch):
  workdir = tmp_path / "w"
  restore = _unwritable(monkeypatch, workdir)
  try:
    _expect_write_error(lambda: train.run(load_config("tiny"), str(workdir)), "--workdir",
                        workdir)
  finally:
    restore()
  assert not os.path.exists(workdir / workdir_lock.LOCK_NAME)


def test_sample_checks_its_output_folder_before_loading_weights(tmp_path, monkeypatch):
  out = tmp_path / "out"
  config = load_config("tiny", **{"sample.output_dir": str(out)})
  restore = _unwritable(monkeypatch, out)
  try:  # the workdir has no weights: without the check, that would be the error
    _expect_write_error(lambda: sample.run(config, str(tmp_path / "w")),
                        "config.sample.output_dir", out)
  finally:
    restore()


def test_export_checks_its_target_before_reading_the_checkpoint(tmp_path, monkeypatch):
  workdir = tmp_path / "w"
  os.makedirs(workdir / "checkpoints")  # empty: reading it would fail otherwise
  dest = tmp_path / "exports"
  restore = _unwritable(monkeypatch, dest)
  try:
    _expect_write_error(
        lambda: export.run(load_config("tiny"), str(workdir), export_dir=str(dest / "e")),
        "--export_dir", dest)
  finally:
    restore()


def test_evaluate_checks_its_report_folder_before_loading_networks(tmp_path, monkeypatch):
  folder = tmp_path / "eval"
  config = load_config("tiny", **{"eval.output": str(folder / "report.json"),
                                  "eval.samples_dir": str(tmp_path / "nothing"),
                                  # missing: loading it would be the error otherwise
                                  "eval.proxy_weights": str(tmp_path / "proxy.npz")})
  restore = _unwritable(monkeypatch, folder)
  try:
    _expect_write_error(lambda: evaluate.run(config, str(tmp_path)), "config.eval.output",
                        folder)
  finally:
    restore()


def test_a_file_in_the_way_of_the_output_folder(tmp_path):
  blocker = tmp_path / "samples"
  blocker.write_text("not a folder")
  with pytest.raises(fileio.WriteError) as e:
    fileio.check_writable(blocker / "sample_0", "config.sample.output_dir")
  _one_line(e.value, "config.sample.output_dir", "in the way", str(blocker))
  fileio.check_writable(tmp_path / "new" / "deeper", "x")
  assert not os.path.exists(tmp_path / "new")  # checking creates nothing
