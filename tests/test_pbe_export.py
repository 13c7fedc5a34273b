"""Paint by Example exports: convert once, load by files, one-line errors, the CLI."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from scdm_jax import sharding
from scdm_jax.inference.paint import PaintPipeline
from scdm_jax.io.weights import read_tensors
from scdm_jax.models import ldm_keys

ROOT = pathlib.Path(__file__).parent / "fixtures" / "paint_by_example"
FOLDER = ROOT / "pipeline"
REPO = pathlib.Path(__file__).resolve().parents[1]


def _mesh(n):
  return sharding.make_mesh({"data": n, "fsdp": 1}, devices=jax.devices()[:n])


@pytest.fixture(scope="module")
def io():
  with np.load(ROOT / "io.npz") as z:
    return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def folder_pipe():
  return PaintPipeline.load(FOLDER, mesh=_mesh(1))


@pytest.fixture(scope="module")
def export_dir(folder_pipe, tmp_path_factory):
  return folder_pipe.save_export(tmp_path_factory.mktemp("exp") / "pbe")


def _assert_same_params(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _one_line(excinfo):
  assert "\n" not in str(excinfo.value), str(excinfo.value)


def test_export_roundtrip_is_bit_identical(folder_pipe, export_dir, io):
  meta = json.loads((pathlib.Path(export_dir) / "meta" / "metadata").read_text())
  assert meta["model"]["kind"] == "paint_by_example"
  assert meta["model"]["unet"] == json.loads((FOLDER / "unet/config.json").read_text())
  assert meta["param_counts"] == folder_pipe.param_counts()
  assert "diffusers folder" in meta["source"]
  pipe = PaintPipeline.load(export_dir, mesh=_mesh(1))
  _assert_same_params(folder_pipe.params(), pipe.params())
  assert pipe.scheduler_config == folder_pipe.scheduler_config
  assert pipe.preprocess == folder_pipe.preprocess
  kw = dict(num_steps=2, guidance_scale=3.0, key=jax.random.key(3))
  want = folder_pipe.paint(io["image_u8"], io["mask_u8"], io["example_u8"], **kw)
  got = pipe.paint(io["image_u8"], io["mask_u8"], io["example_u8"], **kw)
  np.testing.assert_array_equal(got, want)
  # With a mesh: every weight comes back replicated over it.
  mesh = _mesh(2)
  pipe2 = PaintPipeline.from_export(export_dir, mesh=mesh)
  rep = sharding.replicated(mesh)
  for x in jax.tree.leaves(pipe2.params()):
    assert x.sharding.is_equivalent_to(rep, x.ndim)
    assert len(x.sharding.device_set) == 2


def test_original_checkpoint_with_folder_configs(folder_pipe, tmp_path):
  from safetensors.numpy import save_file
  cfg = lambda c: json.loads((FOLDER / c / "config.json").read_text())
  ldm = ldm_keys.to_ldm_checkpoint(
      read_tensors(FOLDER / "unet/diffusion_pytorch_model.safetensors"),
      read_tensors(FOLDER / "vae/diffusion_pytorch_model.safetensors"),
      read_tensors(FOLDER / "image_encoder/model.safetensors"),
      unet_config=cfg("unet"), vae_config=cfg("vae"))
  ldm["betas"] = np.zeros(1000, np.float32)  # as a real LatentDiffusion state dict
  ckpt = tmp_path / "model.safetensors"
  save_file({k: np.ascontiguousarray(v) for k, v in ldm.items()}, str(ckpt))
  # The configs from a folder without weight files.
  configs = tmp_path / "configs"
  shutil.copytree(FOLDER, configs, ignore=shutil.ignore_patterns("*.safetensors"))
  pipe = PaintPipeline.load(ckpt, config=configs, mesh=_mesh(1))
  _assert_same_params(folder_pipe.params(), pipe.params())
  assert "original checkpoint" in pipe.source
  # The released configs (the default) do not fit the tiny weights.
  with pytest.raises(ValueError, match="do not match the config") as e:
    PaintPipeline.load(ckpt, mesh=_mesh(1))
  _one_line(e)


def test_missing_parts_and_unknown_sources(export_dir, tmp_path):
  bad = tmp_path / "exp"
  shutil.copytree(export_dir, bad)
  shutil.rmtree(bad / "params")
  with pytest.raises(FileNotFoundError, match="not a complete export") as e:
    PaintPipeline.load(bad)
  _one_line(e)
  garbled = tmp_path / "garbled"
  shutil.copytree(export_dir, garbled)
  (garbled / "meta" / "metadata").write_text("{not json")
  with pytest.raises(ValueError, match="meta: not valid JSON") as e:
    PaintPipeline.load(garbled)
  _one_line(e)
  folder = tmp_path / "folder"
  shutil.copytree(FOLDER, folder)
  shutil.rmtree(folder / "unet")
  with pytest.raises(FileNotFoundError, match="unet/config.json") as e:
    PaintPipeline.load(folder)
  _one_line(e)
  (tmp_path / "empty").mkdir()
  (tmp_path / "weights.txt").write_text("x")
  for path, err, match in ((tmp_path / "empty", FileNotFoundError, "not a Paint by Example"),
                           (tmp_path / "nope", FileNotFoundError, "no such file"),
                           (tmp_path / "weights.txt", ValueError, "not a Paint by Example")):
    with pytest.raises(err, match=match) as e:
      PaintPipeline.load(path)
    _one_line(e)
  with pytest.raises(ValueError, match="config= is only") as e:
    PaintPipeline.load(FOLDER, config=FOLDER)
  _one_line(e)


def _edit_meta(directory, fn):
  path = pathlib.Path(directory) / "meta" / "metadata"
  meta = json.loads(path.read_text())
  fn(meta)
  path.write_text(json.dumps(meta))


def test_config_that_does_not_fit_the_weights(export_dir, tmp_path):
  wide = lambda m: m["model"]["unet"].update(block_out_channels=[32, 96])
  bad = tmp_path / "wide"
  shutil.copytree(export_dir, bad)
  _edit_meta(bad, wide)
  with pytest.raises(ValueError, match=r"do not fit the config: .*of another shape") as e:
    PaintPipeline.load(bad, mesh=_mesh(1))
  _one_line(e)
  # Without the recorded shapes, orbax's own refusal becomes the one line.
  _edit_meta(bad, lambda m: m.pop("param_shapes"))
  with pytest.raises(ValueError, match="do not fit the config") as e:
    PaintPipeline.load(bad, mesh=_mesh(1))
  _one_line(e)
  _edit_meta(bad, lambda m: m["model"].update(kind="scdm_unet"))
  with pytest.raises(ValueError, match="not a Paint by Example export") as e:
    PaintPipeline.load(bad, mesh=_mesh(1))
  _one_line(e)


def test_cli_converts_in_a_subprocess(folder_pipe, tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  out = tmp_path / "cli_export"
  run = subprocess.run([sys.executable, "-m", "scdm_jax.tools.convert_pbe", str(FOLDER),
                        str(out)], capture_output=True, text=True, env=env, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  report = json.loads(run.stdout.strip().splitlines()[-1])
  assert report["param_counts"] == folder_pipe.param_counts()
  assert report["param_counts"]["total"] == 1817604
  assert report["param_dtype"] == "float32"
  _assert_same_params(folder_pipe.params(), PaintPipeline.load(out, mesh=_mesh(1)).params())
  run = subprocess.run([sys.executable, "-m", "scdm_jax.tools.convert_pbe",
                        str(tmp_path / "nope"), str(tmp_path / "o")], capture_output=True,
                       text=True, env=env, timeout=300)
  assert run.returncode == 1
  assert run.stderr.strip().startswith("convert_pbe: error:") and "\n" not in run.stderr.strip()
