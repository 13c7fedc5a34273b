"""Data commands: corrupt (fixed benchmark copies), class_stats (psi), TFDS builders."""

import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from scdm_jax.data import class_stats
from scdm_jax.data import corrupt
from scdm_jax.data import fake_layouts
from scdm_jax.data import layouts
from scdm_jax.data import noisy


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
  return fake_layouts.make_fake_dataset("ade20k", str(tmp_path_factory.mktemp("c") / "ade"),
                                        num_train=2, num_val=3, size=(70, 90))


@pytest.mark.parametrize("variant", ["ds", "edge", "random"])
def test_corrupt_command(ade, tmp_path, variant, capsys):
  out = tmp_path / variant
  rc = corrupt.main(["--dataset", "ade20k", "--root", ade, "--split", "validation",
                     "--variant", variant, "--out", str(out), "--seed", "5"])
  assert rc == 0 and "wrote 3" in capsys.readouterr().out
  files = sorted(os.listdir(out))
  assert files == ["ADE_val_00000000.png", "ADE_val_00000001.png", "ADE_val_00000002.png",
                   "corrupt.json"]  # no temporary files left behind
  meta = json.loads((out / "corrupt.json").read_text())
  assert meta["variant"] == variant and meta["count"] == 3 and meta["unlabeled_value"] == 0
  ex = layouts.list_examples("ade20k", ade, "validation")[1]
  raw = layouts.read_raw_label(ex.label)
  got = np.asarray(Image.open(out / os.path.basename(ex.label)))
  if variant == "ds":
    np.testing.assert_array_equal(
        got, np.asarray(Image.fromarray(raw).resize((64, 64), Image.NEAREST)))
  elif variant == "edge":
    np.testing.assert_array_equal(got, noisy.corrupt_edge(noisy.resize_nearest(raw, 256), 0))
  else:
    assert got.shape == (256, 256)
    changed = (got == 0) & (noisy.resize_nearest(raw, 256) != 0)
    assert 0.08 < changed.mean() < 0.12
    # Same seed -> same files, whatever --limit.
    out2 = tmp_path / "again"
    corrupt.run("ade20k", ade, "validation", "random", str(out2), seed=5, limit=2, quiet=True)
    np.testing.assert_array_equal(
        got, np.asarray(Image.open(out2 / os.path.basename(ex.label))))


def test_corrupt_errors(ade, tmp_path, capsys):
  rc = corrupt.main(["--dataset", "ade20k", "--root", str(tmp_path / "none"), "--variant",
                     "ds", "--out", str(tmp_path / "o")])
  assert rc == 2 and "does not exist" in capsys.readouterr().err
  celeb = fake_layouts.make_fake_dataset("celebamask_hq", str(tmp_path / "cel"), num_train=1,
                                         num_val=1)
  with pytest.raises(ValueError, match="--unlabeled-value"):
    corrupt.run("celebamask_hq", celeb, "validation", "edge", str(tmp_path / "o2"))
  assert corrupt.run("celebamask_hq", celeb, "validation", "edge", str(tmp_path / "o3"),
                     unlabeled_value=0, quiet=True) == 1


def test_class_stats_on_a_known_set(tmp_path, capsys):
  root = tmp_path / "celeb"
  for split in ("train", "test"):
    (root / split / "images").mkdir(parents=True)
    (root / split / "labels").mkdir(parents=True)
  a = np.zeros((10, 10), np.uint8)
  a[:5] = 1  # class 1 covers 1/2
  b = np.zeros((10, 10), np.uint8)
  b[:2, :5] = 1  # class 1 covers 1/10
  b[5:] = 2  # class 2 covers 1/2
  for i, m in enumerate((a, b)):
    Image.fromarray(m).save(root / "train" / "labels" / f"{i}.png")
  out = tmp_path / "psi.npy"
  rc = class_stats.main(["--dataset", "celebamask_hq", "--root", str(root), "--out", str(out)])
  assert rc == 0
  assert "class stats" in capsys.readouterr().err  # progress bar
  psi = np.load(out)
  assert psi.shape == (19,) and psi.dtype == np.float64
  # psi_c = images containing c / sum of area fractions.
  np.testing.assert_allclose(psi[:3], [2 / (0.5 + 0.4), 2 / (0.5 + 0.1), 1 / 0.5])
  np.testing.assert_allclose(psi[3:], 0.5)  # absent classes: linear
  hist = json.loads((tmp_path / "psi_hist.json").read_text())
  assert hist["pixel_count"][:3] == [90, 60, 50] and hist["image_count"][:3] == [2, 2, 1]
  assert hist["names"][1] == "skin"
  bad = np.full((4, 4), 30, np.uint8)
  Image.fromarray(bad).save(root / "train" / "labels" / "2.png")
  with pytest.raises(ValueError, match=r"2.png.*30 \(16 px\)"):
    class_stats.run("celebamask_hq", str(root), str(out), quiet=True)


def test_tfds_builders_from_manual_dir(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from scdm_jax.data import tfds_builders  # pylint: disable=import-outside-toplevel
  # ADE20K from the original archive name in manual_dir.
  src = fake_layouts.make_fake_dataset("ade20k", str(tmp_path / "src_ade"), num_train=2,
                                       num_val=1)
  manual = tmp_path / "manual_ade"
  manual.mkdir()
  with zipfile.ZipFile(manual / "ADEChallengeData2016.zip", "w") as z:
    for dirpath, _, files in os.walk(src):
      for f in files:
        full = os.path.join(dirpath, f)
        z.write(full, os.path.relpath(full, src))
  # Cityscapes (with instances) from the extracted folders.
  city = fake_layouts.make_fake_dataset("cityscapes", str(tmp_path / "city"), num_train=1,
                                        num_val=2)
  cases = [(tfds_builders.Ade20kSis, manual, {"train": 2, "validation": 1}),
           (tfds_builders.CityscapesSis, city, {"train": 1, "validation": 2})]
  for cls, mdir, counts in cases:
    builder = cls(data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(mdir)))
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == counts
    ds = builder.as_dataset(split="validation")
    exs = list(tfds.as_numpy(ds))
    name = exs[0]["file_name"].decode()
    dataset = cls.DATASET
    ex = [e for e in layouts.list_examples(dataset, str(mdir) if dataset != "ade20k" else src,
                                           "validation") if e.name == name][0]
    np.testing.assert_array_equal(exs[0]["label"][..., 0], layouts.read_raw_label(ex.label))
    assert exs[0]["image"].shape == (48, 64, 3)
    if dataset == "cityscapes":
      np.testing.assert_array_equal(exs[0]["instance"][..., 0],
                                    layouts.read_raw_label(ex.instance))
  # manual_dir without the dataset: a clear error naming what to put there.
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "README.txt").write_text("not the dataset")
  with pytest.raises(FileNotFoundError, match="ADEChallengeData2016.zip"):
    tfds_builders.Ade20kSis(data_dir=str(tmp_path / "tfds2")).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(empty)))
  shutil.rmtree(tmp_path / "tfds", ignore_errors=True)
