"""PaintPipeline: loading (safetensors and pickled .bin), sharding, randomness, options."""

import json
import shutil

import jax
import numpy as np
import pytest

from scdm_jax import sharding
from scdm_jax.inference.paint import PaintPipeline

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def fixture_data():
  import pathlib
  root = pathlib.Path(__file__).parent / "fixtures" / "paint_by_example"
  with np.load(root / "io.npz") as z:
    return root, {k: z[k] for k in z.files}


def _mesh(n):
  return sharding.make_mesh({"data": n, "fsdp": 1}, devices=jax.devices()[:n])


def test_bin_weights_load_like_safetensors(fixture_data, tmp_path):
  """The release ships pickled .bin weights: same tensors through the restricted reader."""
  from safetensors.torch import load_file
  root, d = fixture_data
  folder = tmp_path / "pipeline"
  shutil.copytree(root / "pipeline", folder)
  for comp, st, bin_name in (("unet", "diffusion_pytorch_model.safetensors",
                              "diffusion_pytorch_model.bin"),
                             ("image_encoder", "model.safetensors", "pytorch_model.bin")):
    sd = load_file(str(folder / comp / st))
    if comp == "image_encoder":  # transformers-4 nesting, as the official release
      sd = {("model.vision_model." + k[6:] if k.startswith("model.") else k): v
            for k, v in sd.items()}
    (folder / comp / st).unlink()
    torch.save(sd, folder / comp / bin_name)
  pipe = PaintPipeline.from_pretrained(folder, mesh=_mesh(1))
  with jax.default_matmul_precision("highest"):
    cond, _ = pipe.encode_exemplars(d["example_pixel_values"])
    eps = pipe.unet_eps(d["unet_probe_input"], int(d["unet_probe_t"]), d["unet_probe_context"])
  np.testing.assert_allclose(cond, d["image_embeddings"], atol=1e-5)
  np.testing.assert_allclose(eps, d["unet_probe_eps"], atol=1e-4)


def test_missing_parts_are_one_line_errors(fixture_data, tmp_path):
  root, _ = fixture_data
  folder = tmp_path / "p"
  shutil.copytree(root / "pipeline", folder)
  (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="vae: no weights") as e:
    PaintPipeline.from_pretrained(folder, mesh=_mesh(1))
  assert "\n" not in str(e.value)
  shutil.rmtree(folder / "scheduler")
  with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
    PaintPipeline.from_pretrained(folder, mesh=_mesh(1))
  with pytest.raises(FileNotFoundError, match="not a folder"):
    PaintPipeline.from_pretrained(tmp_path / "nope")
  cfg = json.loads((root / "pipeline/scheduler/scheduler_config.json").read_text())
  shutil.copytree(root / "pipeline" / "scheduler", folder / "scheduler")
  (folder / "scheduler/scheduler_config.json").write_text(
      json.dumps(dict(cfg, prediction_type="v_prediction")))
  with pytest.raises(ValueError, match="prediction_type"):
    PaintPipeline.from_pretrained(folder, mesh=_mesh(1))


def test_sharded_batch_random_paths_and_paste_back(fixture_data):
  """B=2 sharded over 2 devices == B=1 on one device (per-example keys); options run."""
  root, d = fixture_data
  img, mask, ex = d["image_u8"], d["mask_u8"], d["example_u8"]
  img2 = np.stack([img, img[::-1]]).copy()
  mask2 = np.stack([mask, mask[:, ::-1]]).copy()
  kw = dict(num_steps=2, sampler="ddim", eta=0.5, posterior="sample", mask_resize="bilinear",
            paste_back=True, guidance_scale=3.0)
  key = jax.random.key(7)
  pipe2 = PaintPipeline.from_pretrained(root / "pipeline", mesh=_mesh(2))
  with jax.default_matmul_precision("highest"):
    out = pipe2.paint(img2, mask2, [ex, ex[:, ::-1]], key=key, **kw)
    again = pipe2.paint(img2, mask2, [ex, ex[:, ::-1]], key=key, **kw)
    other = pipe2.paint(img2, mask2, [ex, ex[:, ::-1]], key=jax.random.key(8), **kw)
    pipe1 = PaintPipeline.from_pretrained(root / "pipeline", mesh=_mesh(1))
    single = pipe1.paint(img2[:1], mask2[:1], [ex], key=key, **kw)
  assert out.shape == (2, 64, 64, 3) and out.dtype == np.float32
  assert out.min() >= 0 and out.max() <= 1
  np.testing.assert_array_equal(out, again)
  assert np.abs(out - other).max() > 1e-3
  np.testing.assert_allclose(out[:1], single, atol=2e-5)
  keep = (mask2 <= 127)[..., None]
  np.testing.assert_allclose(np.where(keep, out, 0), np.where(keep, img2 / 255.0, 0),
                             atol=1e-6)
  with pytest.raises(ValueError, match="key"):
    pipe1.paint(img2[:1], mask2[:1], [ex], num_steps=2)
  with pytest.raises(ValueError, match="sampler"):
    pipe1.paint(img2[:1], mask2[:1], [ex], key=key, sampler="euler")


def test_unguided_chain_matches_diffusers_pipeline(fixture_data):
  """guidance_scale <= 1 takes the one-call-per-step path; it matches diffusers' __call__."""
  import PIL.Image
  import diffusers
  from diffusers.pipelines.deprecated.paint_by_example import PaintByExampleImageEncoder
  from safetensors.torch import load_file
  from transformers import CLIPImageProcessorPil, CLIPVisionConfig
  root, d = fixture_data
  folder = root / "pipeline"
  encoder = PaintByExampleImageEncoder(CLIPVisionConfig.from_pretrained(
      str(folder / "image_encoder")))
  encoder.load_state_dict(load_file(str(folder / "image_encoder/model.safetensors")))
  ref = diffusers.PaintByExamplePipeline(
      vae=diffusers.AutoencoderKL.from_pretrained(str(folder / "vae")),
      unet=diffusers.UNet2DConditionModel.from_pretrained(str(folder / "unet")),
      scheduler=diffusers.PNDMScheduler.from_pretrained(str(folder / "scheduler")),
      image_encoder=encoder, safety_checker=None, requires_safety_checker=False,
      feature_extractor=CLIPImageProcessorPil.from_pretrained(str(folder / "feature_extractor")))
  ref.set_progress_bar_config(disable=True)
  sf = ref.vae.config.scaling_factor
  ref._encode_vae_image = lambda image, generator: ref.vae.encode(image).latent_dist.mean * sf
  lat_t = torch.from_numpy(d["latents_T"].transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    want = ref(image=PIL.Image.fromarray(d["image_u8"]), mask_image=PIL.Image.fromarray(
        d["mask_u8"]), example_image=PIL.Image.fromarray(d["example_u8"]),
               num_inference_steps=2, guidance_scale=1.0, latents=lat_t,
               output_type="latent").images.numpy().transpose(0, 2, 3, 1)
  pipe = PaintPipeline.from_pretrained(root / "pipeline", mesh=_mesh(1))
  with jax.default_matmul_precision("highest"):
    _, got = pipe.paint(d["image_u8"], d["mask_u8"], d["example_u8"], num_steps=2,
                        guidance_scale=1.0, latents=d["latents_T"], posterior="mean",
                        return_latents=True)
  assert np.abs(got - want).max() / np.abs(want).max() < 1e-4


def test_progress_reports_every_call_and_changes_nothing(fixture_data):
  root, d = fixture_data
  pipe = PaintPipeline.from_pretrained(root / "pipeline", mesh=_mesh(1))
  args = (d["image_u8"][None], d["mask_u8"][None], [d["example_u8"]])
  kw = dict(key=jax.random.key(0), num_steps=3, sampler="pndm")
  seen = []
  with_bar = pipe.paint(*args, progress=lambda i, n: seen.append((i, n)), **kw)
  without = pipe.paint(*args, **kw)
  # PNDM with skip_prk_steps makes N + 1 network calls.
  assert sorted(set(seen)) == [(i, 4) for i in range(1, 5)]
  np.testing.assert_array_equal(with_bar, without)
