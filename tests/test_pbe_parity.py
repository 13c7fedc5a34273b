"""The paint_by_example parity kind on the public fixture (and the CLI's folder argument)."""

import shutil

import numpy as np
import pytest

from scdm_jax import parity
from scdm_jax.parity import __main__ as cli


def test_public_fixture_passes(fixtures_dir, capsys):
  folder = fixtures_dir / "paint_by_example"
  assert cli.main([str(folder)]) == 0
  report = capsys.readouterr().out
  assert "paint_by_example" in report and "FAIL" not in report
  for name in ("example_pixel_values", "image_embeddings", "uncond_embeddings", "keep_mask",
               "masked_image", "vae_posterior_mean", "vae_posterior_std",
               "masked_image_latents", "mask_latents", "unet_probe_eps",
               "vae_decode_of_masked_latents", "ddim/timesteps", "ddim/latents_0",
               "ddim/image", "pndm/timesteps", "pndm/latents_0", "pndm/image"):
    assert f"  {name} " in report, name


def test_kind_detected_from_io_npz(fixtures_dir):
  with np.load(fixtures_dir / "paint_by_example" / "io.npz") as z:
    data = {k: z[k] for k in z.files}
  assert parity.detect_kind(data) == "paint_by_example"


def test_folder_errors_are_one_line(fixtures_dir, tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  assert cli.main([str(empty)]) == 1
  err = capsys.readouterr().err
  assert "io.npz" in err and err.count("\n") == 1
  # io.npz without its pipeline/: names the missing file.
  shutil.copy(fixtures_dir / "paint_by_example" / "io.npz", empty / "io.npz")
  assert cli.main([str(empty)]) == 1
  err = capsys.readouterr().err
  assert "pipeline: not a folder" in err and err.count("\n") == 1


def _write_diffusers_fixture(folder):
  """A second tiny PbE pipeline built with diffusers, and its io.npz of the same schema.

  Differs from the public one in every dimension the tool reads from the folder: widths,
  group counts, heads per level, cross-attention in every level, 2 mapper blocks, a
  non-square 40x56 image, CLIP 24 px with patch 6, a 30x50 exemplar, linear betas with
  set_alpha_to_one, steps_offset 0, 4 steps, guidance 3.
  """
  import diffusers
  import PIL.Image
  import torch
  import transformers
  from diffusers.pipelines.deprecated.paint_by_example import PaintByExampleImageEncoder
  torch.manual_seed(0)
  unet = diffusers.UNet2DConditionModel(
      block_out_channels=(16, 24), layers_per_block=1, norm_num_groups=8, in_channels=9,
      out_channels=4, down_block_types=("CrossAttnDownBlock2D",) * 2,
      up_block_types=("CrossAttnUpBlock2D",) * 2, attention_head_dim=(2, 3),
      cross_attention_dim=16, sample_size=20)
  vae = diffusers.AutoencoderKL(block_out_channels=(8, 16), norm_num_groups=8,
                                down_block_types=("DownEncoderBlock2D",) * 2,
                                up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4,
                                layers_per_block=1, sample_size=40)
  clip_cfg = transformers.CLIPVisionConfig(hidden_size=24, intermediate_size=40,
                                           num_hidden_layers=9, num_attention_heads=2,
                                           image_size=24, patch_size=6, projection_dim=16)
  encoder = PaintByExampleImageEncoder(clip_cfg)
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():  # move every tensor off its initialisation so each layer matters
    for m in (unet, vae, encoder):
      for p in m.parameters():
        p.add_(0.05 * torch.randn(p.shape, generator=g))
  sched = diffusers.PNDMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                                  set_alpha_to_one=True, steps_offset=0, skip_prk_steps=True)
  proc = transformers.CLIPImageProcessorPil(size={"shortest_edge": 24},
                                            crop_size={"height": 24, "width": 24})
  pipe = diffusers.PaintByExamplePipeline(vae=vae, image_encoder=encoder, unet=unet,
                                          scheduler=sched, safety_checker=None,
                                          feature_extractor=proc, requires_safety_checker=False)
  pipe.set_progress_bar_config(disable=True)
  pipe.save_pretrained(folder / "pipeline")

  rng = np.random.default_rng(5)
  image_u8 = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
  mask_u8 = np.zeros((40, 56), np.uint8)
  mask_u8[8:30, 12:40] = 255
  mask_u8[2, 50] = 200
  example_u8 = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
  steps, scale, sf = 4, 3.0, vae.config.scaling_factor
  nhwc = lambda t: t.detach().float().numpy().transpose(0, 2, 3, 1).copy()
  d = dict(image_u8=image_u8, mask_u8=mask_u8, example_u8=example_u8,
           guidance_scale=np.float32(scale), num_inference_steps=np.int32(steps))
  from diffusers.pipelines.deprecated.paint_by_example import pipeline_paint_by_example as ppe
  with torch.no_grad():
    px = proc(images=PIL.Image.fromarray(example_u8), return_tensors="pt").pixel_values
    cond, uncond = encoder(px, return_uncond_vector=True)
    keep, masked = ppe.prepare_mask_and_masked_image(PIL.Image.fromarray(image_u8),
                                                     PIL.Image.fromarray(mask_u8))
    post = vae.encode(masked).latent_dist
    mil = post.mean * sf
    ml = torch.nn.functional.interpolate(keep, size=mil.shape[-2:])
    lat_t = torch.randn(mil.shape, generator=g)
    probe = torch.cat([torch.cat([lat_t] * 2), torch.cat([mil] * 2), torch.cat([ml] * 2)], 1)
    ctx = torch.cat([uncond, cond])
    eps = unet(probe, 501, encoder_hidden_states=ctx).sample
    dec = vae.decode(mil / sf).sample
  d.update(example_pixel_values=nhwc(px), image_embeddings=cond.numpy(),
           uncond_embeddings=uncond.detach().numpy(), keep_mask=nhwc(keep),
           masked_image=nhwc(masked), vae_posterior_mean=nhwc(post.mean),
           vae_posterior_std=nhwc(post.std), masked_image_latents=nhwc(mil),
           mask_latents=nhwc(ml), latents_T=nhwc(lat_t), unet_probe_t=np.int32(501),
           unet_probe_input=nhwc(probe), unet_probe_context=ctx.detach().numpy(),
           unet_probe_eps=nhwc(eps), vae_decode_of_masked_latents=nhwc(dec))
  # The pipeline's own __call__, its posterior sample replaced by the mean.
  pipe._encode_vae_image = lambda image, generator: vae.encode(image).latent_dist.mean * sf
  for name, s in (("ddim", diffusers.DDIMScheduler.from_config(sched.config, clip_sample=False)),
                  ("pndm", sched)):
    pipe.scheduler = s
    with torch.no_grad():
      lat0 = pipe(image=PIL.Image.fromarray(image_u8), mask_image=PIL.Image.fromarray(mask_u8),
                  example_image=PIL.Image.fromarray(example_u8), num_inference_steps=steps,
                  guidance_scale=scale, latents=lat_t.clone(), output_type="latent").images
      img = (vae.decode(lat0 / sf).sample / 2 + 0.5).clamp(0, 1)
    d[f"{name}/timesteps"] = s.timesteps.numpy()
    d[f"{name}/latents_0"] = nhwc(lat0)
    d[f"{name}/image"] = nhwc(img)
  np.savez(folder / "io.npz", **d)


def test_second_fixture_built_with_diffusers_passes(tmp_path, capsys):
  pytest.importorskip("diffusers")
  pytest.importorskip("torch")  # diffusers builds the fixture's weights with torch
  folder = tmp_path / "pbe2"
  folder.mkdir()
  _write_diffusers_fixture(folder)
  assert cli.main([str(folder)]) == 0, capsys.readouterr().out
  report = capsys.readouterr().out
  assert "ddim/image" in report and "FAIL" not in report
  print(report)
