"""Parity of the Paint by Example pipeline with diffusers (fixture kind "paint_by_example").

The fixture is a folder: `pipeline/` (a diffusers `save_pretrained` PaintByExamplePipeline)
and `io.npz` (inputs and every stage's output, NHWC). The pipeline is loaded through the
torch-free readers and the importer, and each stage is recomputed from the file's inputs
and the folder's own configs:

* stage by stage, each from the reference's input to that stage (so an error points at
  one stage): exemplar pixels, exemplar / null embeddings, keep mask and masked image,
  VAE posterior, masked-image latents (posterior mean x scaling_factor), mask latents,
  the UNet probe (also checking that its input is [latents_T, masked latents, mask] and
  its context [null, exemplar]), the VAE decode of the masked latents;
* end to end, from the uint8 inputs and `latents_T` (posterior mean, nearest mask, the
  file's guidance scale and step count): the DDIM and PNDM chains' timesteps (exact),
  final latents and decoded images.

Tolerance: normalised error max|ours - ref| / max|ref| <= 1e-4 per array, final images
max abs error <= 2e-4, masks and timesteps exact. Float32 at "highest" matmul precision.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from scdm_jax import sharding
from scdm_jax.inference.paint import PaintPipeline
from scdm_jax.parity import Comparison, compare

REL_TOL = 1e-4
IMAGE_ABS_TOL = 2e-4
# Keys that identify the kind (the folder's io.npz).
REQUIRED = ("image_u8", "mask_u8", "example_u8", "example_pixel_values", "unet_probe_eps")


def check(data, folder: str | None = None) -> list[Comparison]:
  """Recomputes every stage of a paint_by_example fixture folder.

  Args:
    data: the arrays of `io.npz`.
    folder: the fixture folder (holding `pipeline/`).
  """
  if folder is None:
    raise ValueError("paint_by_example: pass the fixture folder (holding pipeline/ and "
                     "io.npz), not io.npz alone")
  root = os.path.join(folder, "pipeline")
  # One device: the fixture's batch is tiny, and a padded multi-device batch adds nothing.
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1}, devices=jax.devices()[:1])
  with jax.default_matmul_precision("highest"):
    pipe = PaintPipeline.from_pretrained(root, mesh=mesh)
    return _check(pipe, data)


def _check(pipe, d) -> list[Comparison]:
  out: list[Comparison] = []
  rel = lambda name, ours: out.append(compare(name, ours, d[name], tol=REL_TOL))
  exact = lambda name, ours, ref=None: out.append(
      compare(name, ours, d[name] if ref is None else ref, exact=True))

  # Host stages.
  rel("example_pixel_values", pipe.exemplar_pixel_values(d["example_u8"]))
  keep, masked, _ = pipe.prepare_mask(d["image_u8"], d["mask_u8"])
  exact("keep_mask", keep)
  rel("masked_image", masked)
  exact("mask_latents", pipe.mask_latents(d["keep_mask"]))

  # Device stages, each from the reference's own input.
  cond, uncond = pipe.encode_exemplars(d["example_pixel_values"])
  rel("image_embeddings", cond)
  rel("uncond_embeddings", uncond)
  mean, std = pipe.vae_posterior(d["masked_image"])
  rel("vae_posterior_mean", mean)
  rel("vae_posterior_std", std)
  rel("masked_image_latents",
      pipe.masked_image_latents(d["masked_image"], posterior="mean"))
  probe = d["unet_probe_input"]
  tiled = lambda x: np.concatenate([x, x], 0)
  exact("unet_probe_input", np.concatenate(
      [tiled(d["latents_T"]), tiled(d["masked_image_latents"]), tiled(d["mask_latents"])], -1),
      probe)
  exact("unet_probe_context", np.concatenate([d["uncond_embeddings"], d["image_embeddings"]],
                                             0))
  rel("unet_probe_eps", pipe.unet_eps(probe, int(d["unet_probe_t"]), d["unet_probe_context"]))
  rel("vae_decode_of_masked_latents",
      pipe.decode(d["masked_image_latents"], to_unit=False))

  # End-to-end chains from the uint8 inputs and latents_T.
  steps, scale = int(d["num_inference_steps"]), float(d["guidance_scale"])
  for sampler in ("ddim", "pndm"):
    if f"{sampler}/timesteps" not in d:
      continue
    exact(f"{sampler}/timesteps", pipe.scheduler(sampler, steps).timesteps)
    images, latents = pipe.paint(
        d["image_u8"], d["mask_u8"], d["example_u8"], num_steps=steps, guidance_scale=scale, sampler=sampler, latents=d["latents_T"],
        posterior="mean", return_latents=True)
    rel(f"{sampler}/latents_0", latents)
    out.append(compare(f"{sampler}/image", images, d[f"{sampler}/image"], tol=IMAGE_ABS_TOL,
                       abs_tol=True))
  return out

