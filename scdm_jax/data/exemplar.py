"""Host preprocessing for Paint by Example: the exemplar's CLIP pixels, the keep mask.

PIL + numpy only. The conventions reproduce diffusers' `PaintByExamplePipeline` and the
transformers `CLIPImageProcessor` with its PIL backend (transformers 4 and the official
release ran that path; transformers 5's default torchvision backend differs by up to
0.015 after normalisation):

* exemplar, "processor" mode (default, from `feature_extractor/preprocessor_config.json`):
  resize the shortest side to `size.shortest_edge`, the long side to
  `int(shortest * long / short)` (truncated), PIL resampling `resample` on uint8; centre
  crop at `((H - h) // 2, (W - w) // 2)` (zero padding when the image is smaller); then
  `x * rescale_factor` (float64, then float32) and `(x - mean) / std` in float32.
* exemplar, "squash" mode (the official Paint by Example scripts): PIL bicubic resize
  straight to the crop size, /255, the same mean/std.
* mask: `m = mask_u8 / 255` (float32), `keep = 1 - m` binarised at 0.5 (so keep = 1 where
  the user mask is <= 127: PbE's inverted convention, 1 = keep, 0 = hole); the image goes
  to [-1, 1] as `x / 127.5 - 1` and `masked_image = image * keep`.
* the latent-resolution mask: nearest (torch `F.interpolate` default, as diffusers) or
  bilinear with half-pixel centres and no antialiasing (torchvision `Resize` on a tensor,
  as the official code).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

EXEMPLAR_MODES = ("processor", "squash")
MASK_RESIZES = ("nearest", "bilinear")

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class ClipPreprocessConfig:
  """The fields of a CLIPImageProcessor `preprocessor_config.json` used here."""

  do_resize: bool = True
  shortest_edge: int | None = 224  # None: resize straight to (height, width)
  height: int | None = None
  width: int | None = None
  resample: int = 3  # PIL code: 3 = BICUBIC
  do_center_crop: bool = True
  crop_height: int = 224
  crop_width: int = 224
  do_rescale: bool = True
  rescale_factor: float = 1 / 255
  do_normalize: bool = True
  image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
  image_std: tuple[float, float, float] = OPENAI_CLIP_STD
  do_convert_rgb: bool = True

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> ClipPreprocessConfig:
    """Reads a preprocessor_config.json dict (transformers' CLIP defaults where absent)."""
    size = d.get("size", {"shortest_edge": 224})
    if isinstance(size, (int, float)):
      size = {"shortest_edge": int(size)}
    crop = d.get("crop_size", {"height": 224, "width": 224})
    if isinstance(crop, (int, float)):
      crop = {"height": int(crop), "width": int(crop)}
    if "shortest_edge" in size:
      resize = dict(shortest_edge=int(size["shortest_edge"]), height=None, width=None)
    elif "height" in size and "width" in size:
      resize = dict(shortest_edge=None, height=int(size["height"]), width=int(size["width"]))
    else:
      raise ValueError(f"preprocessor config: size {size!r} needs 'shortest_edge' or "
                       "'height' and 'width'")
    mean = d.get("image_mean", OPENAI_CLIP_MEAN)
    std = d.get("image_std", OPENAI_CLIP_STD)
    mean = (float(mean),) * 3 if isinstance(mean, (int, float)) else tuple(map(float, mean))
    std = (float(std),) * 3 if isinstance(std, (int, float)) else tuple(map(float, std))
    return cls(do_resize=bool(d.get("do_resize", True)), **resize,
               resample=int(d.get("resample", 3)),
               do_center_crop=bool(d.get("do_center_crop", True)),
               crop_height=int(crop["height"]), crop_width=int(crop["width"]),
               do_rescale=bool(d.get("do_rescale", True)),
               rescale_factor=float(d.get("rescale_factor", 1 / 255)),
               do_normalize=bool(d.get("do_normalize", True)), image_mean=mean, image_std=std,
               do_convert_rgb=bool(d.get("do_convert_rgb", True)))


def _to_rgb_u8(image: Any, convert_rgb: bool = True) -> np.ndarray:
  if isinstance(image, Image.Image):
    image = np.asarray(image.convert("RGB") if convert_rgb else image)
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"exemplar: expected a uint8 image, got dtype {image.dtype}")
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, -1)
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"exemplar: expected an (H, W, 3) image, got shape {image.shape}")
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, -1)
  elif image.shape[-1] == 4:
    image = np.asarray(Image.fromarray(image, "RGBA").convert("RGB"))
  return image


def resize_output_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
  """transformers' `get_resize_output_image_size(default_to_square=False)`: (H, W)."""
  short, long = (width, height) if width <= height else (height, width)
  new_short, new_long = shortest_edge, int(shortest_edge * long / short)
  return (new_long, new_short) if width <= height else (new_short, new_long)


def _center_crop(image: np.ndarray, h: int, w: int) -> np.ndarray:
  """transformers' numpy centre crop, zero padding an image smaller than the crop."""
  ih, iw = image.shape[:2]
  top, left = (ih - h) // 2, (iw - w) // 2
  if top >= 0 and left >= 0 and top + h <= ih and left + w <= iw:
    return image[top:top + h, left:left + w]
  nh, nw = max(h, ih), max(w, iw)
  canvas = np.zeros((nh, nw) + image.shape[2:], image.dtype)
  tp, lp = -(-(nh - ih) // 2), -(-(nw - iw) // 2)
  canvas[tp:tp + ih, lp:lp + iw] = image
  top, left = top + tp, left + lp
  return canvas[max(0, top):min(nh, top + h), max(0, left):min(nw, left + w)]


def clip_pixel_values(image: Any, config: ClipPreprocessConfig, *,
                      mode: str = "processor") -> np.ndarray:
  """One exemplar (uint8 (H, W, 3) array or PIL image) -> (h, w, 3) float32 CLIP pixels."""
  if mode not in EXEMPLAR_MODES:
    raise ValueError(f"exemplar mode {mode!r} is unknown; use one of {EXEMPLAR_MODES}")
  x = _to_rgb_u8(image, config.do_convert_rgb)
  if mode == "squash":
    # The official scripts: PIL resize (bicubic) straight to the crop size, ToTensor.
    x = np.asarray(Image.fromarray(x).resize((config.crop_width, config.crop_height),
                                             Image.Resampling.BICUBIC))
    x = x.astype(np.float32) / np.float32(255.0)
  else:
    if config.do_resize:
      if config.shortest_edge is not None:
        h, w = resize_output_size(x.shape[0], x.shape[1], config.shortest_edge)
      else:
        h, w = config.height, config.width
      x = np.asarray(Image.fromarray(x).resize((w, h), Image.Resampling(config.resample)))
    if config.do_center_crop:
      x = _center_crop(x, config.crop_height, config.crop_width)
    if config.do_rescale:
      x = (x.astype(np.float64) * config.rescale_factor).astype(np.float32)
    else:
      x = x.astype(np.float32)
  if config.do_normalize:
    mean = np.asarray(config.image_mean, np.float32)
    std = np.asarray(config.image_std, np.float32)
    x = (x - mean) / std
  return np.ascontiguousarray(x, np.float32)


def exemplar_pixel_values(images: Sequence[Any] | np.ndarray, config: ClipPreprocessConfig, *,
                          mode: str = "processor") -> np.ndarray:
  """A batch of exemplars (list of images of any sizes, or (B, H, W, 3)) -> (B, h, w, 3)."""
  if isinstance(images, np.ndarray) and images.ndim == 3:
    images = images[None]
  return np.stack([clip_pixel_values(im, config, mode=mode) for im in images], 0)


def _batch_masks(masks: Any, batch: int, hw: tuple[int, int]) -> np.ndarray:
  m = np.asarray(masks)
  if m.ndim == 4 and m.shape[-1] == 1:
    m = m[..., 0]
  if m.ndim == 2:
    m = m[None]
  if m.ndim != 3 or m.shape[1:] != hw:
    raise ValueError(f"mask: expected (B, {hw[0]}, {hw[1]}) (255 = repaint), got shape "
                     f"{np.asarray(masks).shape}")
  if m.shape[0] != batch:
    if m.shape[0] != 1:
      raise ValueError(f"mask: {m.shape[0]} masks for {batch} images")
    m = np.repeat(m, batch, 0)
  return m


def prepare_mask_and_masked_image(images_u8: Any, masks_u8: Any
                                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """diffusers' PbE `prepare_mask_and_masked_image` on uint8 inputs.

  Args:
    images_u8: (B, H, W, 3) or (H, W, 3) uint8 source images.
    masks_u8: (B, H, W), (H, W) or (B, H, W, 1) uint8; white (255) marks the region to
      repaint. A float mask in [0, 1] is taken as already divided by 255.

  Returns:
    `(keep_mask (B, H, W, 1), masked_image (B, H, W, 3), image (B, H, W, 3))` float32:
    keep_mask 1 = keep, 0 = hole; image in [-1, 1]; masked_image = image * keep_mask.
  """
  x = np.asarray(images_u8)
  if x.ndim == 3:
    x = x[None]
  if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
    raise ValueError(f"image: expected uint8 (B, H, W, 3), got {x.dtype} {x.shape}")
  m = _batch_masks(masks_u8, x.shape[0], x.shape[1:3])
  if m.dtype == np.uint8:
    m = m.astype(np.float32) / np.float32(255.0)
  else:
    m = m.astype(np.float32)
    if m.min() < 0 or m.max() > 1:
      raise ValueError("mask: a float mask must lie in [0, 1]")
  keep = np.float32(1.0) - m  # PbE inverts the mask ...
  keep = (keep >= 0.5).astype(np.float32)[..., None]  # ... then binarises at 0.5
  image = x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
  return keep, image * keep, image


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
  # torch's nearest: floor(dst * (in / out)) in float32, clamped; exact paths for 1x and 2x.
  if n_in == n_out:
    return np.arange(n_out)
  if n_out == 2 * n_in:
    return np.arange(n_out) >> 1
  scale = np.float32(n_in) / np.float32(n_out)
  idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(idx, n_in - 1)


def _bilinear_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  # Half-pixel centres, no antialiasing (torch bilinear, align_corners=False), in float32.
  scale = np.float32(n_in) / np.float32(n_out)
  src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  src = np.maximum(src, np.float32(0.0))
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  return i0, i1, (src - i0.astype(np.float32)).astype(np.float32)


def resize_mask(keep: np.ndarray, size: tuple[int, int], method: str = "nearest") -> np.ndarray:
  """(B, H, W, 1) keep mask -> (B, h, w, 1) at the latent resolution."""
  if method not in MASK_RESIZES:
    raise ValueError(f"mask_resize {method!r} is unknown; use one of {MASK_RESIZES}")
  keep = np.asarray(keep, np.float32)
  (_, hin, win, _), (h, w) = keep.shape, size
  if method == "nearest":
    return keep[:, _nearest_index(hin, h)][:, :, _nearest_index(win, w)]
  y0, y1, fy = _bilinear_weights(hin, h)
  x0, x1, fx = _bilinear_weights(win, w)
  fy, fx = fy[None, :, None, None], fx[None, None, :, None]
  rows = keep[:, y0] * (1 - fy) + keep[:, y1] * fy
  return (rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx).astype(np.float32)
