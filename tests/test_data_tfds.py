"""data.source="tfds": prepared array_record splits read like the folders, and gs:// roots.

GCS cannot be reached here: `fake_gcs` points fileio's one epath seam at a local folder
(`gs://bucket/x` -> `<tmp>/store/bucket/x`), as tests/test_fileio.py does.
"""

import os
import zipfile

from conftest import data_config
import numpy as np
import pytest

from scdm_jax.data import datasets
from scdm_jax.data import fake_layouts
from scdm_jax.data import layouts
from scdm_jax.io import fileio
from scdm_jax.modes import train
from test_train import _assert_trees_equal
from test_train import _params
from test_train import tiny_config

tfds = pytest.importorskip("tensorflow_datasets")
tfds_builders = pytest.importorskip("scdm_jax.data.tfds_builders")

SIZE, NUM = 16, 24  # the tiny config's image size; a small train split


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """A local TFDS data_dir with the procedural dataset (16 px, 24 train examples)."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  tfds_builders.prepare("procedural", data_dir, image_size=SIZE, num_train=NUM)
  return data_dir


def _procedural(**kw):
  return data_config(**dict(dict(name="procedural", image_size=SIZE, num_examples=NUM,
                                 num_parallel_calls=2, use_instance=True), **kw))


def _batches(cfg, n, **kw):
  args = dict(batch_size=4, train=True, seed=3, with_names=True)
  args.update(kw)
  with datasets.create_dataset(cfg, "train", **args) as it:
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_tfds_batches_equal_folder_batches_and_resume(prepared):
  folders = _procedural()
  tfds_cfg = _procedural(source="tfds", tfds_data_dir=prepared)
  # 8 batches of 4 cross the epoch boundary (24 examples): the per-epoch permutation too.
  ref = _batches(folders, 8)
  _assert_same(_batches(tfds_cfg, 8), ref)
  _assert_same(_batches(tfds_cfg, 3, start_step=5), ref[5:8])
  # Evaluation order (one ordered pass, short last batch) on the validation split.
  ev = dict(batch_size=50, train=False, seed=0, with_names=True)
  with datasets.create_dataset(folders, "validation", **ev) as a, \
       datasets.create_dataset(tfds_cfg, "validation", **ev) as b:
    _assert_same(list(a), list(b))
  # A fake 2-process split: each host's shard matches the folder path's and they cover it.
  seen = []
  for p in range(2):
    kw = dict(process_index=p, process_count=2, batch_size=3)
    got = _batches(tfds_cfg, 4, **kw)  # 12 examples = one epoch of the 12-example shard
    _assert_same(got, _batches(folders, 4, **kw))
    seen += [n.decode() for b in got for n in b["name"]]
  assert sorted(seen) == datasets.procedural_names("train", NUM)


@pytest.mark.slow  # four tiny training runs: 378-556 s measured on 2 shared cores (load 12-19)
def test_tfds_trains_and_resumes_like_folders(prepared, tmp_path):
  over = {"data.num_examples": NUM, "data.source": "tfds", "data.tfds_data_dir": prepared}
  folders = str(tmp_path / "folders")
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  s_f = train.run(tiny_config(**{"data.num_examples": NUM}), folders)
  s3 = train.run(tiny_config(**over), straight)
  assert s3["step"] == 3 and s3["train_loss"] == s_f["train_loss"]
  assert train.run(tiny_config(**over, **{"train.total_steps": 2}), resumed)["step"] == 2
  s23 = train.run(tiny_config(**over), resumed)
  assert s23["start_step"] == 2 and s23["train_loss"] == s3["train_loss"]
  cfg = tiny_config(**over)
  _assert_trees_equal(_params(straight, cfg)[0], _params(resumed, cfg)[0])
  _assert_trees_equal(_params(folders, cfg)[0], _params(straight, cfg)[0])


def test_tfds_data_dir_on_gcs_is_staged_and_read(fake_gcs, tmp_path, prepared):
  tfds_builders.prepare("procedural", "gs://bucket/tfds", image_size=SIZE, num_train=NUM)
  info = next((fake_gcs / "bucket/tfds/procedural_sis").rglob("dataset_info.json"))
  before = info.stat().st_mtime_ns
  url = tfds_builders.prepare("procedural", "gs://bucket/tfds", image_size=SIZE, num_train=NUM)
  assert info.stat().st_mtime_ns == before  # already there: not built or uploaded again
  assert url == "gs://bucket/tfds/procedural_sis/s16_n24_seed0/1.0.0"
  assert not (tmp_path / "gs:").exists()
  cache = tmp_path / "cache"
  cfg = _procedural(source="tfds", tfds_data_dir="gs://bucket/tfds", tfds_cache_dir=str(cache))
  _assert_same(_batches(cfg, 2), _batches(_procedural(), 2))
  staged = list(cache.rglob("dataset_info.json"))
  assert len(staged) == 1 and staged[0].parent.name == "train"
  # The next start reads the local copy (the shards are not fetched again) ...
  shard = next((fake_gcs / "bucket/tfds").rglob("*-train.array_record-*"))
  data = shard.read_bytes()
  shard.unlink()
  _assert_same(_batches(cfg, 1), _batches(_procedural(), 1))
  # ... until the dataset is prepared again (another dataset_info.json): then it is re-copied.
  shard.write_bytes(data)
  remote_info = next((fake_gcs / "bucket/tfds").rglob("dataset_info.json"))
  remote_info.write_text(remote_info.read_text().replace('"1.0.0"', '"1.0.0" '))
  staged[0].with_name(shard.name).write_bytes(b"garbage")
  _assert_same(_batches(cfg, 1), _batches(_procedural(), 1))
  # A data_dir without the dataset: one line naming it and the command that prepares it.
  with pytest.raises(FileNotFoundError, match="gs://bucket/none.*prepare"):
    datasets.make_source(_procedural(source="tfds", tfds_data_dir="gs://bucket/none",
                                     tfds_cache_dir=str(cache)), "train")
  # Prepared by TFDS's default (tfrecord, not what random access reads): one line, what to do.
  tfds_builders.BUILDERS["procedural"](
      data_dir=str(tmp_path / "tfrecord"),
      config=tfds_builders.ProceduralConfig(image_size=SIZE, num_train=NUM)
  ).download_and_prepare()
  with pytest.raises(ValueError, match="prepared as tfrecord, not array_record"):
    datasets.make_source(_procedural(source="tfds", tfds_data_dir=str(tmp_path / "tfrecord")),
                         "train")
  with pytest.raises(ValueError, match="data.tfds_data_dir"):
    datasets.make_source(_procedural(source="tfds"), "train")
  with pytest.raises(ValueError, match="data.source='tf'"):
    datasets.make_source(_procedural(source="tf"), "train")


def _upload_tree(local_root, url):
  for d, _, files in os.walk(local_root):
    for f in files:
      rel = os.path.relpath(os.path.join(d, f), local_root).replace(os.sep, "/")
      fileio.upload(os.path.join(d, f), fileio.join(url, rel))


def test_folder_root_and_label_dir_on_gcs(fake_gcs, tmp_path):
  local = fake_layouts.make_fake_dataset("cityscapes", str(tmp_path / "city"), num_train=3,
                                         num_val=1)
  _upload_tree(local, "gs://bucket/city")
  noisy = tmp_path / "noisy"
  for ex in layouts.list_examples("cityscapes", local, "train"):
    raw = layouts.read_raw_label(ex.label).copy()
    raw[4:8] = 0  # unlabeled rows: a visibly different label map
    fake_layouts._save(raw, str(noisy / os.path.basename(ex.label)))  # pylint: disable=protected-access
  _upload_tree(noisy, "gs://bucket/noisy")
  exs = layouts.list_examples("cityscapes", "gs://bucket/city", "train")
  assert [e.name for e in exs] == [e.name for e in layouts.list_examples("cityscapes", local,
                                                                          "train")]
  assert all(e.image.startswith("gs://bucket/city/leftImg8bit/") for e in exs)
  assert not (tmp_path / "gs:").exists()
  kw = dict(name="cityscapes", image_size=32, num_classes=35, num_parallel_calls=2,
            use_instance=True)
  for extra in ({}, {"label_dir": str(noisy)}):
    local_cfg = data_config(**kw, root=local, **extra)
    url_extra = {"label_dir": "gs://bucket/noisy"} if extra else {}
    url_cfg = data_config(**kw, root="gs://bucket/city", **url_extra)
    _assert_same(_batches(url_cfg, 2, batch_size=2), _batches(local_cfg, 2, batch_size=2))
  with pytest.raises(FileNotFoundError, match="gs://bucket/nothing"):
    layouts.list_examples("cityscapes", "gs://bucket/nothing", "train")


def _zip_tree(zip_path, root, top):
  with zipfile.ZipFile(zip_path, "w") as z:
    z.writestr("README", "fake archive")  # the real zips carry a README and a license
    for d, _, files in os.walk(os.path.join(root, top)):
      for f in files:
        full = os.path.join(d, f)
        z.write(full, os.path.relpath(full, root))


def test_cityscapes_from_zips_through_the_documented_command(tmp_path):
  src = fake_layouts.make_fake_dataset("cityscapes", str(tmp_path / "src"), num_train=2,
                                       num_val=1)
  manual = tmp_path / "manual"
  manual.mkdir()
  _zip_tree(manual / "leftImg8bit_trainvaltest.zip", src, "leftImg8bit")
  _zip_tree(manual / "gtFine_trainvaltest.zip", src, "gtFine")
  data_dir = tmp_path / "tfds"
  # The command of docs/data.md (tfds build needs apache_beam, which we do not install).
  assert tfds_builders.main(["--dataset", "cityscapes", "--manual_dir", str(manual),
                             "--data_dir", str(data_dir)]) == 0
  kw = dict(name="cityscapes", image_size=32, num_classes=35, num_parallel_calls=2,
            use_instance=True)
  from_tfds = data_config(**kw, source="tfds", tfds_data_dir=str(data_dir))
  from_folders = data_config(**kw, root=src)
  _assert_same(_batches(from_tfds, 3, batch_size=2), _batches(from_folders, 3, batch_size=2))
  ev = dict(batch_size=4, train=False, seed=0, with_names=True)
  with datasets.create_dataset(from_tfds, "validation", **ev) as a, \
       datasets.create_dataset(from_folders, "validation", **ev) as b:
    _assert_same(list(a), list(b))
