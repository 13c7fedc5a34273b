"""Configs: presets load, variants and overrides work, model section fits UNetConfig;
clu writers work with this clu/tensorboard; main's flag parsing."""

import dataclasses
import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from scdm_jax import recipe
from scdm_jax.models.unet import UNetConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
PRESETS = ["default", "ade20k", "coco_stuff", "celebamask_hq", "cityscapes", "demo", "tiny"]


def load(name, arg=None):
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_schema(name):
  config = load(name)
  # Every model key is a UNetConfig field, apart from the train step's own knobs.
  assert set(config.model.keys()) - set(recipe.TRAIN_ONLY_MODEL_FIELDS) == {
      f.name for f in dataclasses.fields(UNetConfig)}
  recipe.unet_config(config)  # model matches data
  assert config.train.total_steps > 0 and config.train.batch_size > 0
  for section in ("data", "model", "diffusion", "optim", "train", "sample", "edit", "eval",
                  "mesh"):
    assert section in config


@pytest.mark.parametrize("name,k,lr,inst", [("ade20k", 151, 1e-4, False),
                                            ("coco_stuff", 183, 1e-4, True),
                                            ("celebamask_hq", 19, 2e-5, True)])
def test_published_settings(name, k, lr, inst):
  c = load(name)
  assert c.data.image_size == c.model.image_size == 256
  assert c.data.num_classes == k and recipe.unet_config(c).num_classes == k + inst
  assert c.optim.lr == lr and c.train.batch_size == 40 and c.optim.ema_decay == 0.9999
  assert c.diffusion.drop_rate == 0.2 and c.diffusion.label_schedule == "classwise"
  assert (c.sample.respacing, c.sample.guidance_scale, c.sample.dynamic_threshold,
          c.sample.extrapolation) == ("ddim25", 1.5, 0.95, 0.8)
  assert c.model.channel_mult == (1, 1, 2, 2, 4, 4) and c.model.model_channels == 256


def test_variants():
  c = load("ade20k", "finetune,runlocal")
  assert c.optim.lr == 2e-5 and c.data.image_size == c.model.image_size == 32
  c = load("coco_stuff", "sample1000")
  assert c.sample.respacing == "" and c.sample.dynamic_threshold == 0.0
  with pytest.raises(ValueError, match="Unknown config variant"):
    load("ade20k", "bogus")


def test_model_data_mismatch_is_clear():
  c = load("tiny")
  c.model.num_classes = 5
  with pytest.raises(ValueError, match="config.model.num_classes=5 contradicts"):
    recipe.unet_config(c)


def test_clu_writers_smoke(tmp_path):
  from clu import metric_writers
  writer = metric_writers.create_default_writer(str(tmp_path), just_logging=False)
  writer.write_scalars(1, {"loss": 0.5, "lr": 1e-4})
  writer.write_images(1, {"grid": np.zeros((1, 8, 8, 3), np.uint8)})
  writer.write_hparams({"a": 1, "b": "x"})
  writer.flush()
  writer.close()
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))
  logging_writer = metric_writers.create_default_writer(None, just_logging=True)
  logging_writer.write_scalars(1, {"loss": 0.5})
  logging_writer.close()


def _main(*args, timeout=120, extra_env=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("SCDM_TRACEBACK", None)
  env.update(extra_env or {})
  return subprocess.run([sys.executable, "-m", "scdm_jax.main", *args], env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_main_flags():
  r = _main(f"--config={REPO / 'configs' / 'tiny.py'}", "--mode=bogus")
  assert r.returncode != 0 and "mode" in r.stderr
  r = _main(f"--config={REPO / 'configs' / 'tiny.py'}", "--mode=train",
            "--config.train.no_such_key=1")
  assert r.returncode != 0 and "no_such_key" in r.stderr


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_refuses_an_unknown_variant(name):
  with pytest.raises(ValueError, match=rf"Unknown config variant.*bogus.*configs/{name}\.py"):
    load(name, "bogus")


# Every data field the pipeline reads; all must be settable from the command line.
DATA_FIELDS = ("label_dir", "ds_size", "edge_radius", "random_rate", "flip", "num_examples",
               "procedural_seed", "procedural_unlabeled_share", "noise_render_size",
               "num_parallel_calls", "prefetch", "require_images", "root", "noise",
               "unlabeled_to_zero", "use_instance", "class_table")


def test_data_fields_are_in_the_schema_and_settable_on_the_command_line(tmp_path,
                                                                        monkeypatch):
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  assert set(DATA_FIELDS) <= set(load("default").data.keys())
  # main.py's flag, on its own FlagValues; the overrides are read from sys.argv.
  argv = ["prog", f"--config={REPO / 'configs' / 'tiny.py'}",
          f"--config.data.label_dir={tmp_path}", "--config.data.ds_size=16",
          "--config.data.flip=False", "--config.data.shuffle_buffer=16"]  # last: deprecated
  monkeypatch.setattr(sys, "argv", argv)
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True)
  fv(argv)
  assert fv.config.data.label_dir == str(tmp_path) and fv.config.data.ds_size == 16
  assert fv.config.data.flip is False and fv.config.data.shuffle_buffer == 16


def test_deprecated_keys_warn(caplog):
  c = load("tiny")
  c.data.shuffle_buffer = 16
  c.model.num_classes = 9
  with caplog.at_level("WARNING"):
    recipe.warn_deprecated(c)
  assert "config.data.shuffle_buffer is deprecated" in caplog.text
  assert "config.model.num_classes is deprecated" in caplog.text
  assert recipe.unet_config(c).num_classes == 9  # an agreeing old value still loads


@pytest.mark.slow
def test_user_error_is_one_line(tmp_path):
  # A mistake the user made ends in one clear line and exit status 1, not a traceback.
  r = _main(f"--config={REPO / 'configs' / 'tiny.py'}", "--mode=export",
            f"--workdir={tmp_path / 'never_trained'}")
  assert r.returncode == 1, r.stderr[-2000:]
  assert "Traceback" not in r.stderr
  errors = [line for line in r.stderr.splitlines() if line.startswith("scdm_jax: error:")]
  assert len(errors) == 1 and "never_trained" in errors[0], r.stderr[-2000:]
  # SCDM_TRACEBACK=1 shows where it came from.
  r = _main(f"--config={REPO / 'configs' / 'tiny.py'}", "--mode=export",
            f"--workdir={tmp_path / 'never_trained'}", extra_env={"SCDM_TRACEBACK": "1"})
  assert r.returncode != 0 and "Traceback" in r.stderr
