"""Export + sampling from a palette PNG; class-table mismatch refused."""

import importlib.util
import pathlib

import jax
import numpy as np
from PIL import Image
import pytest

from scdm_jax import checkpointing
from scdm_jax import export
from scdm_jax import sample as sample_lib
from scdm_jax import train
from scdm_jax.data import palettes

jax.config.update("jax_disable_most_optimizations", True)

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config():
  spec = importlib.util.spec_from_file_location("tiny_cfg", REPO / "configs" / "tiny.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config()
  config.train.total_steps = 1
  train.train_and_evaluate(config, workdir)
  path = export.export_from_workdir(config, workdir)
  return workdir, path


def test_export_meta(exported):
  _, path = exported
  params, meta = checkpointing.load_export(path)
  assert meta["model"]["num_classes"] == 9 and meta["num_classes"] == 9
  assert meta["class_names"] == list(palettes.get_class_table("procedural").names)
  assert meta["weights"] == "ema" and meta["step"] == 1
  assert meta["label_schedule"]["kind"] == "classwise"
  assert len(meta["label_schedule"]["psi"]) == 9
  assert "input_blocks" in params


def test_sample_from_palette_png(exported, tmp_path):
  _, path = exported
  table = palettes.get_class_table("procedural")
  ids = np.zeros((40, 40), np.int64)
  ids[20:] = 2  # grass below sky
  ids[25:35, 5:15] = 5  # a tree
  Image.fromarray(table.colors[ids].astype(np.uint8)).save(tmp_path / "mine.png")
  config = tiny_config()
  config.sample.checkpoint = path
  config.sample.source = str(tmp_path / "mine.png")
  config.sample.num_samples_per_map = 2
  config.sample.output_dir = str(tmp_path / "out")
  summary = sample_lib.run_sampling(config, None)
  assert summary["maps"] == 1
  for j in range(2):
    with Image.open(tmp_path / "out" / f"sample_{j}" / "mine.png") as im:
      assert im.size == (16, 16) and im.mode == "RGB"
  with Image.open(tmp_path / "out" / "labels" / "mine.png") as im:
    assert im.size == (16, 16)


def test_class_count_mismatch_refused(exported, tmp_path):
  _, path = exported
  config = tiny_config()
  config.data.num_classes = 8
  config.model.num_classes = 8
  config.sample.checkpoint = path
  with pytest.raises(ValueError, match=r"refusing a checkpoint.*9 conditioning channels.*"
                                       r"num_classes=8"):
    sample_lib.load_weights(config, None)


def test_class_table_mismatch_refused(exported, tmp_path):
  _, path = exported
  params, meta = checkpointing.load_export(path)
  meta["class_names"] = ["x%d" % i for i in range(9)]
  other = str(tmp_path / "other")
  checkpointing.save_export(other, params, meta)
  config = tiny_config()
  config.sample.checkpoint = other
  with pytest.raises(ValueError, match="class table differs"):
    sample_lib.load_weights(config, None)
