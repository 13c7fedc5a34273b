"""The small CPU Paint-by-Example demo (configs/paint_by_example.py:cpu_demo / :naive)."""

from conftest import load_config
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scdm_jax import checkpointing
from scdm_jax.inference.paint import PaintPipeline
from scdm_jax.models.autoencoder_kl import AutoencoderKL, VAEConfig
from scdm_jax.modes import export
from scdm_jax.modes import train
from scdm_jax.training import pbe_scratch

jax.config.update("jax_disable_most_optimizations", True)

# Smaller than the preset so that compiling stays short; the structure is the preset's.
TINY = {"paint_train.scratch_unet_channels": (16, 16), "paint_train.scratch_encoder_width": 32,
        "paint_train.scratch_encoder_layers": 1, "paint_train.scratch_context_dim": 16,
        "paint_train.pretrain_encoder_steps": 2, "paint_train.pretrain_encoder_images": 4,
        "data.num_examples": 8, "train.batch_size": 8, "train.total_steps": 2,
        "train.log_every": 1, "train.checkpoint_every": 1, "train.async_checkpoint": False}


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_identity_autoencoder():
  cfg = VAEConfig.from_diffusers({"block_out_channels": [], "latent_channels": 3,
                                  "scaling_factor": 1.0})
  vae = AutoencoderKL(cfg, rngs=nnx.Rngs(0))
  assert cfg.downsample_factor == 1 and not jax.tree.leaves(nnx.state(vae, nnx.Param))
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3), minval=-1, maxval=1)
  mean, std = vae.encode(x)
  np.testing.assert_array_equal(mean, x)
  np.testing.assert_array_equal(std, jnp.zeros_like(x))
  np.testing.assert_array_equal(vae.decode(mean), x)
  with pytest.raises(ValueError, match="latent_channels == in_channels"):
    VAEConfig(block_out_channels=(), latent_channels=4)


def test_crop_set_histograms_are_distributions():
  x, h = pbe_scratch.crop_set(3, image_size=64, encoder_size=16, split="validation", seed=0)
  assert x.shape[1:] == (16, 16, 3) and len(x) == len(h) >= 6  # objects + 2 squares each
  np.testing.assert_allclose(h.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("variant", ["cpu_demo", pytest.param("naive", marks=pytest.mark.slow)])
def test_demo_trains_both_stages_and_keeps_the_tower_frozen(tmp_path, variant):
  config = load_config("paint_by_example", variant, **TINY)
  summary = train.run(config, str(tmp_path / "run"))
  assert summary["step"] == 2 and np.isfinite(summary["train_loss"])
  stats = (tmp_path / "run" / "encoder_pretraining.json").read_text()
  assert '"steps": 2' in stats
  init, _ = checkpointing.load_export(str(tmp_path / "run" / "init"))
  done, _ = checkpointing.load_export(summary["export"])
  # The pretrained tower is frozen: identical after training; the head and UNet moved.
  for a, b in zip(_leaves(init["image_encoder"]["model"]), _leaves(done["image_encoder"]["model"])):
    np.testing.assert_array_equal(a, b)
  assert any(np.any(a != b) for a, b in zip(_leaves(init["image_encoder"]["proj_out"]),
                                            _leaves(done["image_encoder"]["proj_out"])))
  # Pretraining moved the tower away from its random init (same seed, same builder).
  fresh = pbe_scratch.build_scratch_pipeline(
      load_config("paint_by_example", variant,
                  **dict(TINY, **{"paint_train.pretrain_encoder_steps": 0})), None)[0]
  assert any(np.any(a != b) for a, b in zip(
      _leaves(nnx.to_pure_dict(nnx.state(fresh.image_encoder.model))),
      _leaves(init["image_encoder"]["model"])))
  # A changed architecture on resume would silently reuse the old scratch init: refused.
  changed = load_config("paint_by_example", variant, **dict(TINY, **{
      "train.total_steps": 3, "paint_train.scratch_encoder_width": 64}))
  with pytest.raises(ValueError, match="refusing to resume: paint_train.scratch_encoder_width"):
    train.run(changed, str(tmp_path / "run"))
  # --mode export of the newest checkpoint (here the last step) equals the run's export.
  again, _ = checkpointing.load_export(export.run(config, str(tmp_path / "run"),
                                                  str(tmp_path / "again")))
  for a, b in zip(_leaves(done), _leaves(again)):
    np.testing.assert_array_equal(a, b)
  pipe = PaintPipeline.load(summary["export"])
  tokens = pipe.encode_exemplars(np.zeros((1, 16, 16, 3), np.float32))[0].shape[1]
  assert tokens == (17 if variant == "naive" else 1)  # 16 px, patch 4: 1 + 16 tokens
  src = np.full((1, 32, 32, 3), 128, np.uint8)
  mask = np.zeros((1, 32, 32), np.uint8)
  mask[:, 8:20, 8:20] = 255
  out = pipe.paint(src, mask, [np.full((10, 10, 3), 200, np.uint8)], key=jax.random.key(0),
                   sampler="ddim", num_steps=2, guidance_scale=3.0, paste_back=True)
  keep = mask[0] < 128
  np.testing.assert_allclose(out[0][keep], 128 / 255, atol=1e-6)


def test_scratch_refuses_an_init_and_all_tokens_needs_scratch(tmp_path):
  with pytest.raises(ValueError, match="scratch=True builds its own init"):
    train.run(load_config("paint_by_example", "cpu_demo", **dict(TINY, **{
        "paint_train.init": str(tmp_path)})), str(tmp_path / "a"))
  with pytest.raises(ValueError, match="context_tokens=all needs"):
    train.run(load_config("paint_by_example", **{"paint_train.context_tokens": "all",
                                                 "paint_train.init": str(tmp_path)}),
              str(tmp_path / "b"))
