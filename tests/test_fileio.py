"""gs:// workdirs: every non-orbax write and existence check goes through `scdm_jax.io.fileio`.

GCS cannot be reached here, so the test points fileio's one epath seam at a local folder
(`gs://bucket/x` -> `<tmp>/store/bucket/x`) and checks that files land there and that no
local `gs:` folder is created, which is what plain `os` calls did with a URL.
"""

import json
import os

import numpy as np
import pytest

from scdm_jax.data import label_io
from scdm_jax.io import atomic
from scdm_jax.io import fileio
from scdm_jax.io import images as image_io


@pytest.fixture
def fake_gcs(fake_gcs, tmp_path, monkeypatch):  # conftest's stand-in, run from tmp_path
  monkeypatch.chdir(tmp_path)
  return fake_gcs


def test_url_writes_reach_the_store(fake_gcs, tmp_path):
  atomic.write_json("gs://bucket/run/report.json", {"fid": 1.5})
  image_io.save_png("gs://bucket/run/images/grid.png", np.zeros((4, 4, 3), np.uint8))
  atomic.write_npz("gs://bucket/run/stats.npz", {"mu": np.arange(3.0)})

  assert json.loads((fake_gcs / "bucket/run/report.json").read_text()) == {"fid": 1.5}
  assert (fake_gcs / "bucket/run/images/grid.png").read_bytes()[:4] == b"\x89PNG"
  np.testing.assert_array_equal(np.load(fake_gcs / "bucket/run/stats.npz")["mu"],
                                np.arange(3.0))
  assert not (tmp_path / "gs:").exists()
  assert fileio.isdir("gs://bucket/run") and fileio.exists("gs://bucket/run/report.json")
  assert fileio.listdir("gs://bucket/run") == ["images", "report.json", "stats.npz"]
  assert fileio.read_bytes("gs://bucket/run/report.json").startswith(b"{")
  fileio.makedirs("gs://bucket/run/samples/sample_0")
  assert (fake_gcs / "bucket/run/samples/sample_0").is_dir()


def test_failed_url_write_uploads_nothing(fake_gcs):
  with pytest.raises(RuntimeError):
    with atomic.atomic_path("gs://bucket/run/half.png") as tmp:
      with open(tmp, "wb") as f:
        f.write(b"partial")
      raise RuntimeError("interrupted")
  assert not (fake_gcs / "bucket/run/half.png").exists()


def test_local_paths_unchanged(tmp_path):
  assert fileio.absolute("rel/dir") == os.path.abspath("rel/dir")
  assert fileio.absolute("gs://b/x") == "gs://b/x"
  fileio.makedirs(tmp_path / "a" / "b")
  assert fileio.isdir(tmp_path / "a" / "b") and fileio.listdir(tmp_path / "a") == ["b"]


def test_url_reads_list_images_masks_and_labels(fake_gcs):
  # Sampling and editing read their PNGs through fileio too, so gs:// inputs work.
  image_io.save_png("gs://bucket/in/a.png", np.full((4, 4, 3), 255, np.uint8))
  image_io.save_png("gs://bucket/in/b.png", np.zeros((4, 4, 3), np.uint8))
  files = fileio.list_images("gs://bucket/in", "config.sample.source")
  assert files == ["gs://bucket/in/a.png", "gs://bucket/in/b.png"]
  np.testing.assert_array_equal(image_io.load_mask(files[0]), np.ones((4, 4)))
  assert image_io.load_image(files[1]).min() == -1.0
  label_io.save_label_png("gs://bucket/in/lab.png", np.eye(4, dtype=np.int64))
  ids, _ = label_io.load_label_map("gs://bucket/in/lab.png", num_classes=2)
  np.testing.assert_array_equal(ids, np.eye(4))
  with pytest.raises(FileNotFoundError, match="config.edit.guide='gs://bucket/none'"):
    fileio.list_images("gs://bucket/none", "config.edit.guide")


def test_match_by_name_pairs_files_by_stem(tmp_path):
  inputs = [str(tmp_path / "in" / n) for n in ("a.png", "b.jpg")]
  masks = tmp_path / "masks"
  masks.mkdir()
  (masks / "a.png").write_bytes(b"x")
  (masks / "b.jpg").write_bytes(b"x")
  assert fileio.match_by_name(inputs, str(masks), "config.edit.mask", "guide") == [
      str(masks / "a.png"), str(masks / "b.jpg")]
  one = masks / "a.png"
  assert fileio.match_by_name(inputs, str(one), "k", "guide") == [str(one)] * 2
  (masks / "b.jpg").unlink()
  with pytest.raises(FileNotFoundError, match=r"config.edit.mask=.* has no b.png/.jpg for the guide"):
    fileio.match_by_name(inputs, str(masks), "config.edit.mask", "guide")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    fileio.match_by_name(inputs, str(tmp_path / "nope"), "k", "guide")
