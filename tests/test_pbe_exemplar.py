"""Exemplar CLIP preprocessing and the PbE keep mask, against the fixture and the peers."""

import json

import numpy as np
import pytest

from scdm_jax.data import exemplar as ex

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture
def pbe(fixtures_dir):
  root = fixtures_dir / "paint_by_example"
  with np.load(root / "io.npz") as z:
    data = {k: z[k] for k in z.files}
  cfg = json.loads((root / "pipeline/feature_extractor/preprocessor_config.json").read_text())
  return data, cfg


def test_fixture_example_pixel_values_and_mask(pbe):
  data, cfg = pbe
  px = ex.exemplar_pixel_values(data["example_u8"], ex.ClipPreprocessConfig.from_dict(cfg))
  np.testing.assert_allclose(px, data["example_pixel_values"], atol=1e-6)
  keep, masked, image = ex.prepare_mask_and_masked_image(data["image_u8"], data["mask_u8"])
  np.testing.assert_array_equal(keep, data["keep_mask"])
  np.testing.assert_allclose(masked, data["masked_image"], atol=1e-7)
  assert image.min() >= -1 and image.max() <= 1
  h, w = data["mask_latents"].shape[1:3]
  np.testing.assert_array_equal(ex.resize_mask(keep, (h, w)), data["mask_latents"])


@pytest.mark.parametrize("hw,shortest,crop,resample", [
    ((40, 52), 32, 32, 3), ((71, 33), 24, 20, 3), ((50, 50), 30, 30, 2), ((37, 90), 40, 36, 1),
    ((20, 28), 32, 32, 3),
    ((31, 45), 16, (12, 14), 3),
])
def test_processor_mode_matches_transformers_pil(hw, shortest, crop, resample):
  from transformers import CLIPImageProcessorPil
  crop = crop if isinstance(crop, tuple) else (crop, crop)
  d = dict(size={"shortest_edge": shortest}, crop_size={"height": crop[0], "width": crop[1]},
           resample=resample, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3])
  img = np.random.default_rng(sum(hw)).integers(0, 256, hw + (3,), dtype=np.uint8)
  want = CLIPImageProcessorPil(**d)(images=img, return_tensors="np").pixel_values
  got = ex.exemplar_pixel_values(img, ex.ClipPreprocessConfig.from_dict(d))
  assert got.shape == want.transpose(0, 2, 3, 1).shape
  np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), atol=1e-6)


def test_center_crop_pads_small_images():
  d = dict(do_resize=False, crop_size={"height": 9, "width": 12})
  from transformers import CLIPImageProcessorPil
  img = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
  want = CLIPImageProcessorPil(**d)(images=img, return_tensors="np").pixel_values
  got = ex.exemplar_pixel_values(img, ex.ClipPreprocessConfig.from_dict(d))
  np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), atol=1e-6)


def test_squash_mode_is_plain_resize():
  from PIL import Image
  cfg = ex.ClipPreprocessConfig.from_dict({"crop_size": {"height": 16, "width": 16}})
  img = np.random.default_rng(1).integers(0, 256, (30, 20, 3), dtype=np.uint8)
  got = ex.clip_pixel_values(img, cfg, mode="squash")
  ref = np.asarray(Image.fromarray(img).resize((16, 16), Image.BICUBIC), np.float32) / 255
  ref = (ref - np.array(ex.OPENAI_CLIP_MEAN, np.float32)) / np.array(ex.OPENAI_CLIP_STD,
                                                                     np.float32)
  np.testing.assert_allclose(got, ref, atol=1e-6)


def test_mask_matches_diffusers_prepare_mask():
  from PIL import Image
  from diffusers.pipelines.deprecated.paint_by_example import pipeline_paint_by_example as p
  rng = np.random.default_rng(2)
  img = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
  mask = rng.integers(0, 256, (16, 24), dtype=np.uint8)
  mask[0, :4] = [126, 127, 128, 129]  # the threshold
  m_ref, mi_ref = p.prepare_mask_and_masked_image(Image.fromarray(img), Image.fromarray(mask))
  keep, masked, _ = ex.prepare_mask_and_masked_image(img, mask)
  np.testing.assert_array_equal(keep, m_ref.numpy().transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(masked, mi_ref.numpy().transpose(0, 2, 3, 1))
  assert keep[0, 0, :4, 0].tolist() == [1, 1, 0, 0]


@pytest.mark.parametrize("hw,size", [((64, 64), (8, 8)), ((48, 40), (6, 5)),
                                     ((30, 21), (7, 9)), ((8, 8), (16, 16))])
def test_mask_resizes_match_torch(hw, size):
  keep = (np.random.default_rng(3).random((2,) + hw + (1,)) > 0.5).astype(np.float32)
  t = torch.from_numpy(keep.transpose(0, 3, 1, 2))
  near = torch.nn.functional.interpolate(t, size=size).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_array_equal(ex.resize_mask(keep, size, "nearest"), near)
  bil = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False,
                                        antialias=False).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(ex.resize_mask(keep, size, "bilinear"), bil, atol=1e-6)
