"""LDM (original model.ckpt) key names <-> diffusers names, checked against diffusers' own
converters on the fixture's weights."""

import json
import pathlib

import numpy as np
import pytest

from scdm_jax.io.weights import read_tensors
from scdm_jax.models import ldm_keys

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")


FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "paint_by_example"


@pytest.fixture(scope="module")
def fixture_parts():
  root = FIXTURE / "pipeline"
  cfg = lambda c: json.loads((root / c / "config.json").read_text())
  return dict(
      unet=read_tensors(root / "unet/diffusion_pytorch_model.safetensors"),
      vae=read_tensors(root / "vae/diffusion_pytorch_model.safetensors"),
      image_encoder=read_tensors(root / "image_encoder/model.safetensors"),
      unet_config=cfg("unet"), vae_config=cfg("vae"), clip_config=cfg("image_encoder"))


def _same(got, want):
  assert sorted(got) == sorted(want)
  for k in want:
    a, b = np.asarray(got[k]), np.asarray(want[k])
    assert a.shape == b.shape, k
    np.testing.assert_array_equal(a, b, err_msg=k)


@pytest.fixture(scope="module")
def ldm(fixture_parts):
  p = fixture_parts
  state = ldm_keys.to_ldm_checkpoint(p["unet"], p["vae"], p["image_encoder"],
                                     unet_config=p["unet_config"], vae_config=p["vae_config"])
  # What a real LatentDiffusion checkpoint also holds.
  state["betas"] = np.zeros(1000, np.float32)
  state["alphas_cumprod"] = np.ones(1000, np.float32)
  return state


def test_ldm_names_look_like_the_release(ldm):
  for name in ("model.diffusion_model.input_blocks.0.0.weight",
               "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
               "model.diffusion_model.input_blocks.3.0.op.weight",
               "model.diffusion_model.middle_block.1.proj_in.weight",
               "model.diffusion_model.output_blocks.2.1.conv.weight",
               "model.diffusion_model.out.2.bias",
               "first_stage_model.encoder.mid.attn_1.q.weight",
               "first_stage_model.decoder.up.1.upsample.conv.weight",
               "cond_stage_model.transformer.vision_model.embeddings.patch_embedding.weight",
               "cond_stage_model.mapper.resblocks.0.attn.c_qkv.weight",
               "cond_stage_model.final_ln.weight", "proj_out.weight", "learnable_vector"):
    assert name in ldm, name
  assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4


def test_unet_and_vae_match_diffusers_converters(fixture_parts, ldm):
  from diffusers.loaders import single_file_utils as sfu
  p = fixture_parts
  # diffusers' converters recover the fixture from our LDM names (validates the inverse) ...
  _same(sfu.convert_ldm_unet_checkpoint(dict(ldm), p["unet_config"]), p["unet"])
  _same(sfu.convert_ldm_vae_checkpoint(dict(ldm), p["vae_config"]), p["vae"])
  # ... and our forward mapping equals them.
  split = ldm_keys.convert_ldm_checkpoint(ldm, unet_config=p["unet_config"],
                                          vae_config=p["vae_config"])
  _same(split.unet, p["unet"])
  _same(split.vae, p["vae"])
  _same(split.image_encoder, p["image_encoder"])
  assert split.unused == ["alphas_cumprod", "betas"]


def test_image_encoder_matches_diffusers_paint_by_example_converter(fixture_parts, ldm,
                                                                     monkeypatch):
  from diffusers.pipelines.stable_diffusion import convert_from_ckpt as cfc
  from transformers import CLIPVisionConfig
  p = fixture_parts
  tiny = CLIPVisionConfig(**{k: v for k, v in p["clip_config"].items()
                             if k not in ("architectures", "transformers_version")})
  monkeypatch.setattr(cfc.CLIPVisionConfig, "from_pretrained", lambda *a, **k: tiny)
  # transformers 5's CLIPVisionModel has flat names; the release's tower is nested.
  tf5 = {k.replace("cond_stage_model.transformer.vision_model.", "cond_stage_model.transformer."):
         torch.from_numpy(np.array(v)) for k, v in ldm.items()}
  model = cfc.convert_paint_by_example_checkpoint(tf5)
  ref = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  split = ldm_keys.convert_ldm_checkpoint(ldm, unet_config=p["unet_config"],
                                          vae_config=p["vae_config"])
  _same(split.image_encoder, ref)


def test_pipeline_loads_an_ldm_checkpoint(fixture_parts, ldm, tmp_path):
  """A LatentDiffusion model.ckpt (Lightning nesting, pickled) loads into the pipeline."""
  import shutil

  import jax

  from scdm_jax import sharding
  from scdm_jax.inference.paint import PaintPipeline
  root = tmp_path / "configs"
  src = FIXTURE / "pipeline"
  shutil.copytree(src, root, ignore=shutil.ignore_patterns("*.safetensors"))
  ckpt = tmp_path / "model.ckpt"
  torch.save({"state_dict": {k: torch.from_numpy(np.array(v)) for k, v in ldm.items()},
              "global_step": 1}, ckpt)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1}, devices=jax.devices()[:1])
  pipe = PaintPipeline.from_pretrained(root, mesh=mesh, ldm_checkpoint=ckpt)
  with np.load(src.parent / "io.npz") as z:
    px, want = z["example_pixel_values"], z["image_embeddings"]
  with jax.default_matmul_precision("highest"):
    cond, _ = pipe.encode_exemplars(px)
  np.testing.assert_allclose(cond, want, atol=1e-5)
