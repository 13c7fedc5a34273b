"""PyTorch checkpoint import: the convert CLI end to end, and clear refusals."""

import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from scdm_jax.models import torch_import
from scdm_jax.models.unet import UNetConfig

torch = pytest.importorskip("torch")


def _fixture(fixtures_dir):
  with np.load(fixtures_dir / "unet.npz") as npz:
    return {k: npz[k] for k in npz.files}


def _state_dict(data):
  return {k[len("param/"):]: v for k, v in data.items() if k.startswith("param/")}


def _write_config(tmp_path, ref_cfg: UNetConfig, num_classes: int):
  model = ref_cfg.to_dict()
  path = tmp_path / "tiny_config.py"
  path.write_text(textwrap.dedent(f"""
      import ml_collections

      def get_config():
        c = ml_collections.ConfigDict()
        c.model = ml_collections.ConfigDict({model!r})
        c.data = ml_collections.ConfigDict(dict(num_classes={num_classes}, use_instance=False))
        return c
      """))
  return path


def test_convert_cli_end_to_end(tmp_path, fixtures_dir):
  from scdm_jax import checkpointing
  from scdm_jax.tools import convert

  data = _fixture(fixtures_dir)
  cfg = UNetConfig.from_reference_kwargs(str(data["config"]))
  # An EMA-style file nested under "state_dict", float16 as in the fixture.
  sd = {k: torch.from_numpy(v) for k, v in _state_dict(data).items()}
  pt = tmp_path / "ema_0.9999_000000.pt"
  torch.save({"state_dict": sd}, pt)
  cfg_file = _write_config(tmp_path, cfg, cfg.num_classes)
  out = tmp_path / "export"
  assert convert.main(["--torch_checkpoint", str(pt), "--config", str(cfg_file),
                       "--out", str(out)]) == 0
  params, meta = checkpointing.load_export(out)
  assert meta["num_classes"] == cfg.num_classes and "source" in meta
  loaded_cfg = UNetConfig(**meta["model"])
  assert loaded_cfg == cfg
  model = torch_import.unet_from_params(loaded_cfg, params)
  got = model(jnp.asarray(data["x"]), jnp.asarray(data["t"]), jnp.asarray(data["y"]))
  assert np.abs(np.asarray(got) - data["out"]).max() <= 2e-4


def test_convert_model_kwargs_and_wrong_class_count(tmp_path, fixtures_dir, capsys):
  from scdm_jax import convert

  data = _fixture(fixtures_dir)
  pt = tmp_path / "model.pt"
  torch.save({k: torch.from_numpy(v) for k, v in _state_dict(data).items()}, pt)
  kwargs = str(data["config"]).replace("'num_classes': 5", "'num_classes': 7")
  status = convert.main(["--torch_checkpoint", str(pt), "--model_kwargs", kwargs,
                         "--out", str(tmp_path / "bad")])
  assert status == 1
  err = capsys.readouterr().err
  assert "the checkpoint has 5 label channels" in err
  assert "num_classes=7" in err
  assert not (tmp_path / "bad").exists()


def test_shape_mismatch_names_tensor_and_shapes(fixtures_dir):
  data = _fixture(fixtures_dir)
  cfg = UNetConfig.from_reference_kwargs(str(data["config"]))
  sd = _state_dict(data)
  sd["input_blocks.1.0.in_layers.2.weight"] = np.zeros((32, 32, 1, 1), np.float16)
  with pytest.raises(ValueError, match=r"input_blocks\.1\.0\.in_layers\.2\.weight has shape "
                     r"\(32, 32, 1, 1\), the config needs \(32, 32, 3, 3\)"):
    torch_import.torch_to_params(sd, cfg)


def test_missing_and_unexpected_keys(fixtures_dir):
  data = _fixture(fixtures_dir)
  cfg = UNetConfig.from_reference_kwargs(str(data["config"]))
  sd = _state_dict(data)
  del sd["out.2.bias"]
  sd["module.extra.weight"] = np.zeros(3, np.float16)  # "module." prefix is stripped
  with pytest.raises(ValueError, match=r"missing tensor\(s\): \['out.2.bias'\].*"
                     r"unexpected tensor\(s\): \['extra.weight'\]"):
    torch_import.torch_to_params(sd, cfg)


def test_round_trip_names_and_layouts(fixtures_dir):
  data = _fixture(fixtures_dir)
  cfg = UNetConfig.from_reference_kwargs(str(data["config"]))
  sd = _state_dict(data)
  back = torch_import.params_to_torch(torch_import.torch_to_params(sd, cfg), cfg)
  assert set(back) == set(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(back[k], v.astype(np.float32), err_msg=k)
