"""gs:// workdirs: every non-orbax write and existence check goes through `scdm_jax.fileio`.

GCS cannot be reached here, so the test points fileio's one epath seam at a local folder
(`gs://bucket/x` -> `<tmp>/store/bucket/x`) and checks that files land there and that no
local `gs:` folder is created, which is what plain `os` calls did with a URL.
"""

import json
import os

import numpy as np
import pytest
from etils import epath

from scdm_jax import atomic
from scdm_jax import fileio
from scdm_jax import logging_utils


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  store = tmp_path / "store"
  store.mkdir()
  monkeypatch.setattr(fileio, "_epath",
                      lambda url: epath.Path(store / os.fspath(url).split("://", 1)[1]))
  monkeypatch.chdir(tmp_path)
  return store


def test_url_writes_reach_the_store(fake_gcs, tmp_path):
  atomic.write_json("gs://bucket/run/report.json", {"fid": 1.5})
  logging_utils.save_png("gs://bucket/run/images/grid.png", np.zeros((4, 4, 3), np.uint8))
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
