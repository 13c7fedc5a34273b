"""Export + sampling from a palette PNG; class-table mismatch refused; no retrace."""

from conftest import load_config
import jax
import numpy as np
from PIL import Image
import pytest

from scdm_jax import checkpointing
from scdm_jax import recipe
from scdm_jax import sharding
from scdm_jax import state as state_lib
from scdm_jax.data import palettes
from scdm_jax.inference import loading
from scdm_jax.inference import runner
from scdm_jax.inference import sampler
from scdm_jax.modes import export
from scdm_jax.modes import sample
from scdm_jax.modes import train

jax.config.update("jax_disable_most_optimizations", True)


def tiny_config():
  return load_config("tiny")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config()
  config.train.total_steps = 1
  train.run(config, workdir)
  path = export.run(config, workdir)
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
  summary = sample.run(config, None)
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
  config.sample.checkpoint = path
  with pytest.raises(ValueError, match=r"refusing a checkpoint.*9 conditioning channels.*"
                                       r"num_classes=8"):
    loading.load_weights(config, None)


def test_class_table_mismatch_refused(exported, tmp_path):
  _, path = exported
  params, meta = checkpointing.load_export(path)
  meta["class_names"] = ["x%d" % i for i in range(9)]
  other = str(tmp_path / "other")
  checkpointing.save_export(other, params, meta)
  config = tiny_config()
  config.sample.checkpoint = other
  with pytest.raises(ValueError, match="class table differs"):
    loading.load_weights(config, None)


def test_sampler_does_not_retrace_for_new_maps(exported):
  """New label maps of the same shape reuse the compiled sampler (one trace)."""
  _, path = exported
  config = tiny_config()
  config.sample.respacing = "2"
  params_pure, meta = checkpointing.load_export(path)
  mesh = sharding.make_mesh(config.mesh)
  graphs, abstract = state_lib.graphs_and_abstract(config)
  param_sh = sharding.state_shardings(mesh, abstract.params, int(config.mesh.fsdp_min_size))
  params = state_lib.params_from_pure(graphs, params_pure, param_sh)
  fn, _ = sampler.make_sample_fn(config, graphs, mesh, param_sh,
                                 recipe.label_schedule_for(config, meta))
  rng = np.random.default_rng(0)
  for i in range(3):
    ids = rng.integers(-1, 9, (3, 16, 16)).astype(np.int32)  # 3 rows: padded to 8
    labels, n = runner.put_padded({"label": ids}, mesh)
    out = runner.host_rows(fn(params, labels, jax.random.key(i)), n)
    assert out.shape == (3, 16, 16, 3)
  assert fn._cache_size() == 1  # pylint: disable=protected-access
