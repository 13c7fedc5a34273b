"""Paint-by-Example models (SD UNet, AutoencoderKL, CLIP vision + mapper) and weight import.

Parity against the diffusers/transformers golden outputs in fixtures/paint_by_example/,
and against freshly built tiny torch models of other configurations (the port must hold
for any folder of this schema). Tolerance: max |error| / max |reference| <= 1e-4.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scdm_jax.io.weights import read_tensors
from scdm_jax.models import pbe_import as pi
from scdm_jax.models.autoencoder_kl import VAEConfig
from scdm_jax.models.clip_vision import CLIPVisionConfig
from scdm_jax.models.pbe_encoder import PaintByExampleImageEncoder
from scdm_jax.models.sd_unet import SDUNetConfig

TOL = 1e-4


def rel_err(ours, ref) -> float:
  ref = np.asarray(ref, np.float64)
  return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


@pytest.fixture(scope="module")
def pbe(request):
  root = request.config.rootpath / "tests" / "fixtures" / "paint_by_example"
  io = dict(np.load(root / "io.npz"))
  return root / "pipeline", io


def _config(folder, name):
  return json.loads((folder / name / "config.json").read_text())


@pytest.fixture(scope="module")
def fixture_unet(pbe):
  folder, _ = pbe
  cfg = SDUNetConfig.from_diffusers(_config(folder, "unet"))
  sd = read_tensors(folder / "unet" / "diffusion_pytorch_model.safetensors")
  return cfg, sd


def _unet_probe(unet, io):
  t = np.broadcast_to(io["unet_probe_t"], (io["unet_probe_input"].shape[0],))
  return nnx.jit(lambda m, x, t, c: m(x, t, c))(
      unet, jnp.asarray(io["unet_probe_input"]), jnp.asarray(t),
      jnp.asarray(io["unet_probe_context"]))


# ------------------------------------------------------------------ fixture parity

def test_unet_parity_fixture(pbe, fixture_unet):
  _, io = pbe
  cfg, sd = fixture_unet
  assert cfg.num_heads == (8, 8)  # attention_head_dim is read as the head count
  unet = pi.unet_from_state_dict(sd, cfg)
  err = rel_err(_unet_probe(unet, io), io["unet_probe_eps"])
  print(f"unet_probe_eps rel err {err:.2e}")
  assert err <= TOL


def test_vae_parity_fixture(pbe):
  folder, io = pbe
  cfg = VAEConfig.from_diffusers(_config(folder, "vae"))
  assert cfg.scaling_factor == pytest.approx(0.18215)
  vae = pi.vae_from_state_dict(
      read_tensors(folder / "vae" / "diffusion_pytorch_model.safetensors"), cfg)
  mean, std = vae.encode(jnp.asarray(io["masked_image"]))
  dec = vae.decode(jnp.asarray(io["masked_image_latents"]) / cfg.scaling_factor)
  errs = {"vae_posterior_mean": rel_err(mean, io["vae_posterior_mean"]),
          "vae_posterior_std": rel_err(std, io["vae_posterior_std"]),
          "masked_image_latents": rel_err(mean * cfg.scaling_factor,
                                          io["masked_image_latents"]),
          "vae_decode_of_masked_latents": rel_err(dec, io["vae_decode_of_masked_latents"])}
  print({k: f"{v:.2e}" for k, v in errs.items()})
  assert max(errs.values()) <= TOL, errs


def test_image_encoder_parity_fixture(pbe):
  folder, io = pbe
  cfg = CLIPVisionConfig.from_transformers(_config(folder, "image_encoder"))
  enc = pi.image_encoder_from_state_dict(
      read_tensors(folder / "image_encoder" / "model.safetensors"), cfg)
  emb = enc(jnp.asarray(io["example_pixel_values"]))
  assert emb.shape == (1, 1, 32)
  errs = {"image_embeddings": rel_err(emb, io["image_embeddings"]),
          "uncond_embeddings": rel_err(enc.uncond_embeddings(1), io["uncond_embeddings"])}
  print({k: f"{v:.2e}" for k, v in errs.items()})
  assert max(errs.values()) <= TOL, errs
  assert enc.uncond_embeddings(3).shape == (3, 1, 32)


def test_image_encoder_accepts_transformers4_names(pbe):
  folder, io = pbe
  cfg = CLIPVisionConfig.from_transformers(_config(folder, "image_encoder"))
  sd = read_tensors(folder / "image_encoder" / "model.safetensors")
  nested = {("model.vision_model." + k[len("model."):] if k.startswith("model.") else k): v
            for k, v in sd.items()}
  nested["model.vision_model.embeddings.position_ids"] = np.arange(65)[None]
  enc = pi.image_encoder_from_state_dict(nested, cfg)
  assert rel_err(enc(jnp.asarray(io["example_pixel_values"])), io["image_embeddings"]) <= TOL


# ------------------------------------------------------------------ importer errors

def test_shape_mismatch_names_tensor_and_shapes(fixture_unet):
  cfg, sd = fixture_unet
  wrong = SDUNetConfig.from_diffusers({**_fixture_unet_dict(cfg), "cross_attention_dim": 16})
  with pytest.raises(ValueError) as e:
    pi.unet_from_state_dict(sd, wrong)
  msg = str(e.value)
  assert "\n" not in msg
  assert "attn2.to_k.weight" in msg and "(32, 32)" in msg and "(32, 16)" in msg, msg


def test_missing_and_unexpected_tensors_refused(fixture_unet):
  cfg, sd = fixture_unet
  fewer = SDUNetConfig.from_diffusers({**_fixture_unet_dict(cfg), "layers_per_block": 1})
  pattern = r"96 unexpected tensor\(s\): down_blocks\.0\.attentions\.1"
  with pytest.raises(ValueError, match=pattern) as e:
    pi.unet_from_state_dict(sd, fewer)
  assert "\n" not in str(e.value)
  partial = {k: v for k, v in sd.items() if k != "conv_in.bias"}
  with pytest.raises(ValueError, match=r"1 missing tensor\(s\): conv_in.bias"):
    pi.unet_from_state_dict(partial, cfg)


def test_config_refusals(pbe):
  folder, _ = pbe
  unet = _config(folder, "unet")
  for key, value in (("resnet_time_scale_shift", "scale_shift"), ("class_embed_type", "timestep"),
                     ("num_attention_heads", 4), ("conv_in_kernel", 7), ("new_field", 1)):
    with pytest.raises(ValueError, match=key) as e:
      SDUNetConfig.from_diffusers({**unet, key: value})
    assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="down block type"):
    SDUNetConfig.from_diffusers({**unet, "down_block_types": ["SimpleCrossAttnDownBlock2D",
                                                              "DownBlock2D"]})
  with pytest.raises(ValueError, match="shift_factor"):
    VAEConfig.from_diffusers({**_config(folder, "vae"), "shift_factor": 0.1})
  with pytest.raises(ValueError, match="hidden_act"):
    CLIPVisionConfig.from_transformers({**_config(folder, "image_encoder"),
                                        "hidden_act": "relu"})


def _fixture_unet_dict(cfg: SDUNetConfig) -> dict:
  return {"in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
          "block_out_channels": list(cfg.block_out_channels),
          "down_block_types": list(cfg.down_block_types),
          "up_block_types": list(cfg.up_block_types),
          "layers_per_block": cfg.layers_per_block, "attention_head_dim": list(cfg.num_heads),
          "cross_attention_dim": cfg.cross_attention_dim,
          "norm_num_groups": cfg.norm_num_groups}


# ------------------------------------------------------- other configs, built by torch

def _numpy_state(model) -> dict:
  return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def test_unet_parity_other_config(tmp_path):
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  config = {
      "in_channels": 5, "out_channels": 3, "block_out_channels": [16, 24, 32],
      "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
      "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
      "layers_per_block": 1, "attention_head_dim": [2, 4, 2],
      "transformer_layers_per_block": [1, 2, 1], "cross_attention_dim": 12,
      "norm_num_groups": 8, "norm_eps": 1e-6, "use_linear_projection": True,
      "flip_sin_to_cos": False, "freq_shift": 1, "sample_size": 8,
  }
  torch.manual_seed(0)
  ref = diffusers.UNet2DConditionModel(**config).eval()
  with torch.no_grad():  # non-trivial norms (the defaults are ones/zeros)
    for name, p in ref.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  ref.save_pretrained(tmp_path / "unet")
  saved = json.loads((tmp_path / "unet" / "config.json").read_text())
  cfg = SDUNetConfig.from_diffusers(saved)
  ours = pi.unet_from_state_dict(
      read_tensors(tmp_path / "unet" / "diffusion_pytorch_model.safetensors"), cfg)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 10, 14, 5)).astype(np.float32)  # odd sizes on the way down
  t = np.array([3.5, 801.0], np.float32)
  ctx = rng.standard_normal((2, 3, 12)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t),
               torch.from_numpy(ctx)).sample.permute(0, 2, 3, 1).numpy()
  got = nnx.jit(lambda m, x, t, c: m(x, t, c))(ours, x, t, ctx)
  err = rel_err(got, want)
  print(f"other-config unet rel err {err:.2e}")
  assert got.shape == (2, 10, 14, 3) and err <= TOL


def test_vae_parity_other_config():
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  config = {"in_channels": 3, "out_channels": 3, "block_out_channels": [16, 24, 32],
            "down_block_types": ["DownEncoderBlock2D"] * 3,
            "up_block_types": ["UpDecoderBlock2D"] * 3, "layers_per_block": 2,
            "latent_channels": 3, "norm_num_groups": 8, "scaling_factor": 0.5}
  torch.manual_seed(1)
  ref = diffusers.AutoencoderKL(**config).eval()
  sd = _numpy_state(ref)
  # Pre-0.14 attention names, as older releases store them.
  old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  for k in [k for k in sd if ".attentions.0." in k]:
    head, tail = k.split(".attentions.0.")
    name, kind = tail.rsplit(".", 1)
    if name in old:
      sd[f"{head}.attentions.0.{old[name]}.{kind}"] = sd.pop(k)
  cfg = VAEConfig.from_diffusers(dict(ref.config))
  assert cfg.scaling_factor == 0.5
  vae = pi.vae_from_state_dict(sd, cfg)
  x = np.random.default_rng(1).uniform(-1, 1, (1, 16, 24, 3)).astype(np.float32)
  with torch.no_grad():
    post = ref.encode(torch.from_numpy(x).permute(0, 3, 1, 2)).latent_dist
    dec = ref.decode(post.mean).sample.permute(0, 2, 3, 1).numpy()
    mean, std = (a.permute(0, 2, 3, 1).numpy() for a in (post.mean, post.std))
  m, s = vae.encode(x)
  assert m.shape == (1, 4, 6, 3)
  errs = [rel_err(m, mean), rel_err(s, std), rel_err(vae.decode(m), dec)]
  print("other-config vae rel errs", [f"{e:.2e}" for e in errs])
  assert max(errs) <= TOL


def test_image_encoder_parity_other_config():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from diffusers.pipelines.deprecated.paint_by_example.image_encoder import (
      PaintByExampleImageEncoder)
  hf_cfg = transformers.CLIPVisionConfig(
      hidden_size=24, intermediate_size=40, num_hidden_layers=9, num_attention_heads=3,
      image_size=28, patch_size=7, hidden_act="gelu", layer_norm_eps=1e-6,
      projection_dim=20)
  torch.manual_seed(2)
  ref = PaintByExampleImageEncoder(hf_cfg).eval()
  with torch.no_grad():
    for name, p in ref.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  cfg = CLIPVisionConfig.from_transformers(hf_cfg.to_dict())
  assert (cfg.hidden_act, cfg.projection_dim) == ("gelu", 20)
  enc = pi.image_encoder_from_state_dict(_numpy_state(ref), cfg)
  assert len(enc.mapper) == 2  # (9 + 1) // 5
  x = np.random.default_rng(2).standard_normal((2, 28, 28, 3)).astype(np.float32)
  with torch.no_grad():
    want, unc = ref(torch.from_numpy(x).permute(0, 3, 1, 2), return_uncond_vector=True)
    pooled = ref.model(pixel_values=torch.from_numpy(x).permute(0, 3, 1, 2)).pooler_output
  _, ours_pooled = enc.model(x)
  errs = [rel_err(ours_pooled, pooled.numpy()), rel_err(enc(x), want.numpy()),
          rel_err(enc.uncond_embeddings(1), unc.detach().numpy())]
  print("other-config image encoder rel errs", [f"{e:.2e}" for e in errs])
  assert max(errs) <= TOL


# ----------------------------------------------------------------- counts, bf16, remat

def test_released_param_counts():
  report = pi.released_param_report()
  json.dumps(report)
  c = report["param_counts"]
  # Equal to the diffusers/transformers modules of these configs (checked on meta device).
  assert c["unet"] == 859_535_364
  assert c["vae"] == 83_653_863
  assert c["clip_tower"] == 303_179_776
  assert c["image_encoder"] == 366_950_912


def test_unet_bf16_close_to_fp32(pbe, fixture_unet):
  _, io = pbe
  cfg, sd = fixture_unet
  unet = pi.unet_from_state_dict(sd, cfg, dtype=jnp.bfloat16)
  assert unet.conv_in.kernel.dtype == jnp.float32  # params stay float32
  got = _unet_probe(unet, io)
  assert got.dtype == jnp.float32
  err = rel_err(got, io["unet_probe_eps"])
  print(f"bf16 unet rel err {err:.2e}")
  assert err < 5e-2


def test_image_encoder_bf16_close_to_fp32(pbe):
  # bf16 attention used to fail to compile on the CPU (no bf16 x bf16 -> f32 dot there).
  folder, io = pbe
  cfg = CLIPVisionConfig.from_transformers(_config(folder, "image_encoder"))
  enc = pi.image_encoder_from_state_dict(
      read_tensors(folder / "image_encoder" / "model.safetensors"), cfg, dtype=jnp.bfloat16)
  emb = nnx.jit(lambda m, x: m(x))(enc, jnp.asarray(io["example_pixel_values"]))
  assert emb.dtype == jnp.float32
  assert rel_err(emb, io["image_embeddings"]) < 5e-2


def test_remat_gives_same_gradients():
  # The tiny CLIP encoder keeps the two backward compiles short; the UNet's remat path
  # (the same run_block) is checked forward below.
  cfg = CLIPVisionConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=4,
                         num_attention_heads=2, image_size=8, patch_size=4, projection_dim=8)
  x = jnp.ones((1, 8, 8, 3)) * jnp.linspace(-1, 1, 8)[:, None, None]

  def grads(remat):
    model = PaintByExampleImageEncoder(cfg, remat=remat, rngs=nnx.Rngs(0))
    loss = lambda m: jnp.mean(m(x) ** 2)
    return jax.tree.leaves(nnx.jit(nnx.grad(loss))(model))

  for a, b in zip(grads(False), grads(True)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_unet_remat_forward(pbe, fixture_unet):
  _, io = pbe
  cfg, sd = fixture_unet
  unet = pi.unet_from_state_dict(sd, cfg, remat=True)
  assert rel_err(_unet_probe(unet, io), io["unet_probe_eps"]) <= TOL
