"""Paint-by-Example train step: what trains, what stays frozen, the zero-init widening."""

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from safetensors.numpy import save_file

from scdm_jax.diffusion import ldm_schedulers
from scdm_jax.inference.paint import PaintPipeline, read_component_weights
from scdm_jax.models import pbe_init
from scdm_jax.models.sd_unet import SDUNet
from scdm_jax.training import pbe_loop
from scdm_jax.training import pbe_step

PIPE = pathlib.Path(__file__).parent / "fixtures" / "paint_by_example" / "pipeline"


@pytest.fixture(scope="module")
def pipe():
  return PaintPipeline.from_pretrained(PIPE)


def _abar(pipe):
  cfg = ldm_schedulers.SchedulerConfig.from_dict(pipe.scheduler_config, "ddim")
  return ldm_schedulers.alphas_cumprod(cfg)


def _batch(b=4, s=32, e=32, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32)
  keep = np.ones((b, s, s, 1), np.float32)
  keep[:, 8:24, 4:20] = 0.0
  return {"image": image, "masked_image": image * keep, "keep_mask": keep,
          "reference": rng.normal(size=(b, e, e, 3)).astype(np.float32)}


def _names(state):
  return {".".join(str(k) for k in path) for path, _ in nnx.to_flat_state(state)}


def test_trainable_split_is_unet_mapper_norm_proj_uncond(pipe):
  model = pbe_step.PbEModel(pipe.unet, pipe.vae, pipe.image_encoder)
  _, trainable, frozen = pbe_step.split_model(model)
  tops = {tuple(n.split(".")[:2]) if n.startswith("image_encoder") else n.split(".")[0]
          for n in _names(trainable)}
  assert "unet" in tops and "vae" not in tops
  enc = {t[1] for t in tops if isinstance(t, tuple)}
  assert enc == {"mapper", "final_layer_norm", "proj_out", "uncond_vector"}
  frozen_tops = {tuple(n.split(".")[:2]) for n in _names(frozen)}
  assert {t[0] for t in frozen_tops} == {"vae", "image_encoder"}
  assert {t[1] for t in frozen_tops if t[0] == "image_encoder"} == {"model"}


def test_one_step_changes_only_trainable_params(pipe):
  model = pbe_step.PbEModel(pipe.unet, pipe.vae, pipe.image_encoder)
  graphdef, trainable, frozen = pbe_step.split_model(model)
  frozen_before = jax.tree.map(np.array, frozen)
  tx = optax.adamw(1e-3)
  st = pbe_step.init_state(trainable, tx, seed=0)
  # AdamW state holds moments of the trainable leaves only.
  assert len(jax.tree.leaves(st.opt)) == 2 * len(jax.tree.leaves(trainable)) + 1
  cfg = pbe_step.LossConfig(scaling_factor=pipe.vae_config.scaling_factor, uncond_prob=0.5)
  step = jax.jit(pbe_step.make_train_step(graphdef, tx, lambda s: 1e-3, _abar(pipe), cfg))
  before = jax.tree.map(np.array, st.params)
  new, metrics = step(st, frozen, _batch())
  assert 0.0 < float(metrics["uncond_frac"]) < 1.0  # both the context and uncond_vector train
  assert float(metrics["finite"]) == 1.0 and int(new.step) == 1
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)),
                         nnx.to_pure_dict(new.params), nnx.to_pure_dict(before))
  flat = {".".join(str(getattr(k, "key", k)) for k in p): v
          for p, v in jax.tree_util.tree_leaves_with_path(changed)}
  assert flat["image_encoder.uncond_vector"] and flat["unet.conv_in.kernel"]
  assert flat["image_encoder.proj_out.kernel"] and flat["image_encoder.mapper.0.attn1.to_q.kernel"]
  assert np.mean(list(flat.values())) > 0.9
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, frozen), frozen_before)


def test_non_finite_loss_keeps_the_state(pipe):
  model = pbe_step.PbEModel(pipe.unet, pipe.vae, pipe.image_encoder)
  graphdef, trainable, frozen = pbe_step.split_model(model)
  tx = optax.adamw(1e-3)
  st = pbe_step.init_state(trainable, tx, seed=0)
  before = jax.tree.map(np.array, st.params)
  cfg = pbe_step.LossConfig(scaling_factor=pipe.vae_config.scaling_factor)
  step = jax.jit(pbe_step.make_train_step(graphdef, tx, lambda s: 1e-3, _abar(pipe), cfg))
  batch = _batch()
  batch["image"][0, 0, 0, 0] = np.nan
  new, metrics = step(st, frozen, batch)
  assert float(metrics["finite"]) == 0.0 and int(new.step) == 0
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, new.params), before)


def test_zero_init_widening_gives_the_base_models_eps_and_loss(pipe):
  base = SDUNet(dataclasses.replace(pipe.unet_config, in_channels=4), rngs=nnx.Rngs(3))
  wide = pbe_init.widen_conv_in(base)
  model = pbe_step.PbEModel(wide, pipe.vae, pipe.image_encoder)
  cfg = pbe_step.LossConfig(scaling_factor=pipe.vae_config.scaling_factor)
  batch, key, abar = _batch(), jax.random.key(7), _abar(pipe)
  loss, _ = pbe_step.pbe_loss(model, abar, batch, key, cfg)
  x = pbe_step.loss_inputs(model, abar, batch, key, cfg)
  eps_base = base(x["z_t"], x["t"], x["context"])
  eps_wide = wide(jnp.concatenate([x["z_t"], x["masked_latents"], x["mask"]], -1), x["t"],
                  x["context"])
  np.testing.assert_array_equal(np.asarray(eps_wide), np.asarray(eps_base))
  assert float(jnp.abs(x["masked_latents"]).max()) > 0  # the extra channels are not zero
  np.testing.assert_array_equal(np.asarray(loss),
                                np.asarray(jnp.mean(jnp.square(eps_base - x["noise"]))))


def test_mask_resize_nearest_matches_strided_pick():
  keep = np.random.default_rng(0).uniform(size=(2, 32, 32, 1)).astype(np.float32)
  out = pbe_step.resize_mask(jnp.asarray(keep), (4, 4), "nearest")
  np.testing.assert_array_equal(np.asarray(out), keep[:, ::8, ::8])
  with pytest.raises(ValueError, match="mask_resize"):
    pbe_step.resize_mask(jnp.asarray(keep), (4, 4), "cubic")


def _sd_unet_folder(tmp_path, in_channels=4):
  """The fixture's UNet as a 4-channel SD-v1 diffusers folder (conv_in's first 4 slices)."""
  sd = dict(read_component_weights(str(PIPE), "unet"))
  sd["conv_in.weight"] = np.ascontiguousarray(sd["conv_in.weight"][:, :in_channels])
  cfg = json.loads((PIPE / "unet" / "config.json").read_text())
  cfg["in_channels"] = in_channels
  folder = tmp_path / f"sd_unet_{in_channels}"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps(cfg))
  save_file({k: np.ascontiguousarray(v) for k, v in sd.items()},
            str(folder / "diffusion_pytorch_model.safetensors"))
  return str(folder)


def test_sd_unet_folder_is_widened_with_zero_slices(pipe, tmp_path):
  unet = pbe_loop.load_sd_unet(_sd_unet_folder(tmp_path), pipe.unet_config)
  k = np.asarray(unet.conv_in.kernel[...])
  assert k.shape[2] == 9 and unet.config.in_channels == 9
  np.testing.assert_array_equal(k[:, :, 4:], 0.0)
  np.testing.assert_array_equal(k[:, :, :4], np.asarray(pipe.unet.conv_in.kernel[...])[:, :, :4])
  with pytest.raises(ValueError, match="sd_unet"):
    pbe_loop.load_sd_unet(_sd_unet_folder(tmp_path, 9), pipe.unet_config)
  with pytest.raises(FileNotFoundError, match="sd_unet"):
    pbe_loop.load_sd_unet(str(tmp_path), pipe.unet_config)


def test_grad_accum_averages_the_micro_batch_gradients(pipe):
  model = pbe_step.PbEModel(pipe.unet, pipe.vae, pipe.image_encoder)
  graphdef, trainable, frozen = pbe_step.split_model(model)
  tx = optax.sgd(1.0)  # the update is minus the gradient: compare gradients through it
  cfg = pbe_step.LossConfig(scaling_factor=pipe.vae_config.scaling_factor, uncond_prob=0.5)
  abar, batch = _abar(pipe), _batch()
  st = pbe_step.init_state(trainable, tx, seed=0)
  before = jax.tree.map(np.array, st.params)
  step = jax.jit(pbe_step.make_train_step(graphdef, tx, lambda s: 1.0, abar, cfg, accum=2))
  new, metrics = step(st, frozen, batch)
  key = jax.random.fold_in(jax.random.wrap_key_data(st.rng), 0)

  # Jitted: op by op on the CPU, these two gradients took minutes.
  loss = lambda p, mb, k: pbe_step.pbe_loss(nnx.merge(graphdef, p, frozen), abar, mb, k, cfg)[0]
  grad = jax.jit(jax.value_and_grad(loss))

  def micro(i):
    return grad(st.params, {k: v[i::2] for k, v in batch.items()}, jax.random.fold_in(key, i))

  (l0, g0), (l1, g1) = micro(0), micro(1)
  np.testing.assert_allclose(float(metrics["loss"]), (float(l0) + float(l1)) / 2, rtol=1e-6)
  want = jax.tree.map(lambda p, a, b: p - (a + b) / 2, before, g0, g1)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               nnx.to_pure_dict(new.params), nnx.to_pure_dict(want))
