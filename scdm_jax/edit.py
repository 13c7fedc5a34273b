"""SDEdit stroke-guided synthesis and masked (label-edit) regeneration.

Two uses of one procedure (docs/editing.md; spec: sdedit-paint-by-example.md A.5, C.1-C.2):

* **SDEdit synthesis** (`Editor.sdedit`): a guide image (colour strokes) is noised to the
  level `t0`, x_k0 = q_sample(guide, k0, eps), and the reverse chain runs from there to 0,
  conditioned on a label map, or unconditionally (the classifier-free null label: the
  all-zero conditioning) when there is none.
* **Masked editing** (`Editor.masked_edit`): a source image, a mask (1 = regenerate) and
  optionally an edited label map (and strokes pasted into the mask). Every step the region
  mask == 0 is replaced by the source re-noised to the current level, and at the end the
  source is pasted back there exactly, so only the masked region is generated.

`t0` is a *noise level*, not an index: t0 in (0, 1] names the alpha-bar of the linear-beta
VP schedule with T = 1000 at step t0 * T (`alpha_bar_for_t0`), and the chain starts at the
respaced index whose alpha-bar is nearest to it (`start_index_for`). So t0 = 0.5 means the
same amount of noise (alpha-bar 0.079) on a linear or a cosine schedule, on the full chain
or on a 25-step one. `alpha_bar=` may be given instead.

K repeats: the output of repeat k is the guide of repeat k + 1 (masked: only inside the
mask). Everything (all repeats, all steps) is one compiled program built on
`scdm_jax.diffusion.sampling.sample`, batched and sharded over the devices of a mesh; the
repeats are unrolled in the program (K is small: 1-3), the steps are one `lax.scan`.

`run_edit(config, workdir)` is `--mode edit` (inputs from `config.edit`, weights and sampler
settings from `config.sample`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scdm_jax import sharding
from scdm_jax.diffusion import label_diffusion
from scdm_jax.diffusion import sampling
from scdm_jax.diffusion import schedules
from scdm_jax.diffusion.gaussian import GaussianDiffusion

# The reference scale of t0: SDEdit's (and guided-diffusion's) linear-beta VP chain.
REFERENCE_SCHEDULE = ("linear", 1000)

# Defaults of `config.edit` (see docs/editing.md); `run_edit` fills in missing fields.
EDIT_DEFAULTS = {
    "guide": "",  # guide (SDEdit) / source (masked) image: PNG or folder of PNGs
    "mask": "",  # "" = SDEdit on the whole image; else mask PNG / folder (1/255 = regenerate)
    "label": "",  # "" = unconditional (null label); else label PNG / folder (ids or palette)
    "strokes": "",  # masked mode: optional strokes PNG / folder pasted inside the mask
    "t0": 0.5,  # noise level on the linear-VP T=1000 scale, in (0, 1]
    "alpha_bar": 0.0,  # > 0: use this alpha-bar instead of t0
    "repeats": 1,  # K
    "respacing": "ddim25",  # chain: "ddim25", "" = the full chain, "100", ...
    "eta": 1.0,  # DDIM only (config.sample.sampler == "ddim"): SDEdit wants noise
    "dilate": 0,  # grow the mask by this many pixels (2 at 64 px is a good start)
    "num_samples": 1,  # outputs per input (different noise)
    "output_dir": "",  # "" = <workdir>/edits
}


# ---------------------------------------------------------------------------
# t0 <-> alpha-bar <-> start index
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _reference_alphas_cumprod() -> np.ndarray:
  betas = schedules.get_betas(*REFERENCE_SCHEDULE)
  return np.cumprod(1.0 - betas)


def alpha_bar_for_t0(t0: float) -> float:
  """alpha-bar of the linear-VP T=1000 chain at noise level t0 in (0, 1].

  t0 * 1000 counts noising steps: t0 = k / 1000 gives alpha_bar_{k} = prod_{s<k}(1 - beta_s)
  (guided-diffusion's table at original timestep k - 1; so t0 = 0.5 is timestep 499,
  alpha-bar 0.0786). Between grid points log alpha-bar is interpolated linearly, and
  t0 -> 0 tends to alpha-bar 1 (no noise).

  Raises:
    ValueError: t0 outside (0, 1].
  """
  t0 = float(t0)
  if not 0.0 < t0 <= 1.0:
    raise ValueError(f"t0 must be in (0, 1] (noise level on the linear-VP scale), got {t0}")
  ac = _reference_alphas_cumprod()
  log_ac = np.concatenate([[0.0], np.log(ac)])  # k = 0 (clean) .. T
  return float(np.exp(np.interp(t0 * len(ac), np.arange(len(log_ac)), log_ac)))


def start_index_for(diffusion: GaussianDiffusion, *, t0: float | None = 0.5,
                    alpha_bar: float | None = None) -> int:
  """The respaced index of `diffusion` whose alpha-bar is nearest to the target.

  The target is `alpha_bar` when given (in (0, 1)), else `alpha_bar_for_t0(t0)`.
  """
  if alpha_bar is not None and alpha_bar > 0:
    target = float(alpha_bar)
    if not 0.0 < target < 1.0:
      raise ValueError(f"alpha_bar must be in (0, 1), got {alpha_bar}")
  elif t0 is None:
    raise ValueError("give t0 (in (0, 1]) or alpha_bar (in (0, 1))")
  else:
    target = alpha_bar_for_t0(t0)
  ac = diffusion.table("alphas_cumprod")
  return int(np.argmin(np.abs(ac - target)))


# ---------------------------------------------------------------------------
# The traceable procedure
# ---------------------------------------------------------------------------


def sdedit(model_apply: sampling.ModelApply, diffusion: GaussianDiffusion,
           label_schedule: label_diffusion.LabelSchedule, guide, cond, key, *,
           start_index: int, num_label_channels: int, mask=None, repeats: int = 1,
           sampler: str = "ddpm", eta: float = 1.0, guidance_scale: float = 1.0,
           dynamic_threshold: float = 0.0, extrapolation: float = 0.0,
           clip_denoised: bool = True, label_mode: str = "fresh",
           progress: Callable[[int, int], None] | None = None) -> jax.Array:
  """SDEdit (mask None) or masked SDEdit; pure and traceable (call it under `jax.jit`).

  Args:
    model_apply: `(x_t, t_orig, cond) -> eps (and v)`, as for `sampling.sample`.
    diffusion: the chain to run on (any respacing).
    label_schedule: the model's label schedule.
    guide: (B, H, W, 3) guide in [-1, 1]. Masked: its region mask == 0 is the source that
      is kept exactly; inside the mask it is the starting guide (source or strokes).
    cond: (B, H, W, L) conditioning (all zeros: unconditional).
    key: PRNG key.
    start_index: respaced index k0 to start from (static; see `start_index_for`).
    num_label_channels: K (the label channels of `cond`).
    mask: optional (B, H, W, 1) {0, 1}: 1 = generated, 0 = kept from `guide`.
    repeats: K repeats; the output of one is the guide of the next (inside the mask).
    sampler, eta, guidance_scale, dynamic_threshold, extrapolation, clip_denoised,
      label_mode: passed to `sampling.sample`.
    progress: host `progress(step, total)` over all repeats (total = repeats * (k0 + 1)).

  Returns:
    (B, H, W, 3) float32 images.
  """
  repeats = int(repeats)
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  guide = jnp.asarray(guide, jnp.float32)
  b = guide.shape[0]
  steps = int(start_index) + 1
  x = guide
  for r in range(repeats):
    k_eps, k_run = jax.random.split(jax.random.fold_in(key, r))
    g = x if mask is None else mask * x + (1 - mask) * guide
    t = jnp.full((b,), int(start_index), jnp.int32)
    x_init = diffusion.q_sample(g, t, jax.random.normal(k_eps, g.shape, jnp.float32))
    prog = None
    if progress is not None:
      prog = functools.partial(_offset_progress, progress, r * steps, repeats * steps)
    x = sampling.sample(
        model_apply, diffusion, label_schedule, cond, k_run, sampler=sampler, eta=eta,
        guidance_scale=guidance_scale, dynamic_threshold=dynamic_threshold,
        extrapolation=extrapolation, clip_denoised=clip_denoised, label_mode=label_mode,
        num_label_channels=num_label_channels, x_init=x_init, start_index=int(start_index),
        known=None if mask is None else guide, mask=mask, progress=prog)
  return x


def _offset_progress(progress, offset, total, step, _):
  progress(offset + step, total)


# ---------------------------------------------------------------------------
# Inputs: images, masks, labels
# ---------------------------------------------------------------------------


def load_image(path: str) -> np.ndarray:
  """An RGB(A)/grey PNG or JPEG -> (H, W, 3) float32 in [-1, 1]."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  if not os.path.exists(path):
    raise FileNotFoundError(f"image {path} does not exist")
  with Image.open(path) as im:
    arr = np.asarray(im.convert("RGB"))
  return to_float_image(arr, path)


def to_float_image(image, name: str = "image") -> np.ndarray:
  """uint8 0..255 -> float32 [-1, 1]; float input must already be in [-1, 1].

  Raises:
    ValueError: a float image outside [-1, 1] or a wrong channel count.
  """
  arr = np.asarray(image)
  if arr.shape[-1:] != (3,):
    raise ValueError(f"{name}: expected RGB images (..., H, W, 3), got shape {arr.shape}")
  if arr.dtype == np.uint8:
    return arr.astype(np.float32) / 127.5 - 1.0
  arr = arr.astype(np.float32)
  lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
  if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
    raise ValueError(f"{name}: float images must be in [-1, 1], found values in "
                     f"[{lo:.3g}, {hi:.3g}]; pass uint8 arrays for 0..255 images")
  return np.clip(arr, -1.0, 1.0)


def load_mask(mask, name: str | None = None) -> np.ndarray:
  """A mask (PNG path or array) -> float32 {0, 1} of its spatial shape (1 = regenerate).

  Accepted: values within {0, 1} or within {0, 255} (bool too); a PNG may be grey, 1-bit,
  palette or RGB(A) with equal channels; arrays (..., H, W) or (..., H, W, 1).

  Raises:
    ValueError: any other values (naming the file and the values found), or colour masks.
  """
  if isinstance(mask, (str, os.PathLike)):
    from PIL import Image  # pylint: disable=import-outside-toplevel
    path = os.fspath(mask)
    name = name or path
    if not os.path.exists(path):
      raise FileNotFoundError(f"mask {path} does not exist")
    with Image.open(path) as im:
      if im.mode == "P":
        im = im.convert("RGB")
      arr = np.asarray(im)
    if arr.ndim == 3:
      if arr.shape[-1] in (2, 4):  # LA / RGBA: ignore alpha
        arr = arr[..., :-1]
      if arr.shape[-1] == 3 and not ((arr[..., 0] == arr[..., 1]).all()
                                     and (arr[..., 0] == arr[..., 2]).all()):
        raise ValueError(f"mask {name}: a colour image; masks must be black/white "
                         "(0 = keep, 255 or 1 = regenerate)")
      arr = arr[..., 0]
  else:
    name = name or "<mask array>"
    arr = np.asarray(mask)
    if arr.ndim >= 3 and arr.shape[-1] == 1:
      arr = arr[..., 0]
  if arr.dtype == bool:
    return arr.astype(np.float32)
  vals = np.unique(arr)
  if np.all(np.isin(vals, (0, 1))):
    return (arr == 1).astype(np.float32)
  if np.all(np.isin(vals, (0, 255))):
    return (arr == 255).astype(np.float32)
  shown = ", ".join(f"{v:g}" for v in vals[:12].astype(np.float64)) + \
      (f", ... ({len(vals)} distinct)" if len(vals) > 12 else "")
  raise ValueError(f"mask {name}: values must be 0/1 or 0/255 (1 or 255 = regenerate), "
                   f"found {shown}. Save the mask as a black/white PNG without "
                   "anti-aliasing (threshold it first).")


def dilate_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
  """Grows a {0, 1} mask (..., H, W) by `pixels` (Chebyshev distance: square neighbourhood)."""
  pixels = int(pixels)
  if pixels < 0:
    raise ValueError(f"mask dilation must be >= 0 pixels, got {pixels}")
  m = np.asarray(mask, np.float32)
  if pixels == 0:
    return m
  h, w = m.shape[-2:]
  pad = [(0, 0)] * (m.ndim - 2) + [(pixels, pixels)] * 2
  p = np.pad(m, pad)
  out = np.zeros_like(m)
  for dy in range(2 * pixels + 1):
    for dx in range(2 * pixels + 1):
      out = np.maximum(out, p[..., dy:dy + h, dx:dx + w])
  return out


def _check_same_size(items: list[tuple[str, tuple[int, int]]]) -> None:
  first_name, first = items[0]
  for nm, hw in items[1:]:
    if tuple(hw) != tuple(first):
      raise ValueError(f"size mismatch: {first_name} is {first[0]}x{first[1]} (HxW) but "
                       f"{nm} is {hw[0]}x{hw[1]}; give images, masks and label maps of "
                       "the same size")


# ---------------------------------------------------------------------------
# The batched, sharded editor
# ---------------------------------------------------------------------------


class Editor:
  """Runs SDEdit / masked editing with one model, batched and sharded over a mesh.

  Example:
    editor = Editor(unet, GaussianDiffusion.create("linear", 1000, "ddim25"), schedule,
                    num_classes=9)
    out = editor.sdedit(strokes_uint8, label=ids, t0=0.5, seed=0)   # (B, H, W, 3)
    out = editor.masked_edit(source, mask, label=edited_ids, t0=1.0, dilate=2)

  Args:
    model: an `nnx.Module` (e.g. the UNet; its state is an argument of the compiled
      program) or a plain function `(x_t, t_orig, cond) -> eps[, v]`.
    diffusion: the chain to run on (e.g. respacing "ddim25", or None for the full chain).
    label_schedule: the model's label schedule.
    num_classes: K label classes; `use_instance` adds the edge channel (L = K + 1).
    mesh: device mesh (default: all devices, data parallel); batches are padded to a
      multiple of its size and split over it.
    params_sharding: optional shardings of the model state (default replicated).
    sampler, eta, guidance_scale, dynamic_threshold, extrapolation, label_mode,
      clip_denoised: the sampler settings (`sampling.sample`); eta is used by "ddim" only.
    progress: optional host `progress(step, total)`; called every step of a run.
  """

  def __init__(self, model, diffusion: GaussianDiffusion,
               label_schedule: label_diffusion.LabelSchedule, *, num_classes: int,
               use_instance: bool = False, mesh: jax.sharding.Mesh | None = None,
               params_sharding: Any = None, sampler: str = "ddpm", eta: float = 1.0,
               guidance_scale: float = 1.0, dynamic_threshold: float = 0.0,
               extrapolation: float = 0.0, label_mode: str = "fresh",
               clip_denoised: bool = True,
               progress: Callable[[int, int], None] | None = None):
    from flax import nnx  # pylint: disable=import-outside-toplevel
    self.diffusion, self.label_schedule = diffusion, label_schedule
    self.num_classes = int(num_classes)
    self.use_instance = bool(use_instance)
    self.cond_channels = self.num_classes + int(self.use_instance)
    self.mesh = mesh if mesh is not None else sharding.make_mesh({"data": -1, "fsdp": 1})
    self.settings = dict(sampler=sampler, eta=float(eta), guidance_scale=float(guidance_scale),
                         dynamic_threshold=float(dynamic_threshold),
                         extrapolation=float(extrapolation), label_mode=label_mode,
                         clip_denoised=bool(clip_denoised))
    self.progress = progress
    if isinstance(model, nnx.Module):
      self._graphdef, self._state = nnx.split(model)
      shard = params_sharding if params_sharding is not None else jax.tree.map(
          lambda _: sharding.replicated(self.mesh), self._state)
      self._state = jax.device_put(self._state, shard)
      self._state_sharding = shard
      self._fn_model = None
    else:
      self._graphdef, self._state = None, {}
      self._state_sharding = sharding.replicated(self.mesh)
      self._fn_model = model
    self._programs: dict[tuple, Callable] = {}

  # ------------------------------------------------------------------ public API

  def start_index(self, t0: float | None = 0.5, alpha_bar: float | None = None) -> int:
    """Respaced start index of this editor's chain for t0 (or alpha_bar)."""
    return start_index_for(self.diffusion, t0=t0, alpha_bar=alpha_bar)

  def sdedit(self, guide, *, label=None, t0: float | None = 0.5,
             alpha_bar: float | None = None, repeats: int = 1, seed: int | jax.Array = 0,
             num_samples: int = 1) -> np.ndarray:
    """SDEdit synthesis from a guide (strokes).

    Args:
      guide: (H, W, 3) or (B, H, W, 3) uint8 or float in [-1, 1].
      label: None (unconditional: the null label), class ids (…, H, W) int (-1 =
        unknown), one-hot (…, H, W, K) or full conditioning (…, H, W, L).
      t0 / alpha_bar: noise level (see `start_index_for`).
      repeats: K.
      seed: int or PRNG key; same seed, inputs and batch -> same output.
      num_samples: outputs per guide (rows b * num_samples + j).

    Returns:
      (B * num_samples, H, W, 3) float32 in [-1, 1].
    """
    guide = self._images(guide, "guide")
    cond = self._cond(label, guide.shape[:3], "label")
    return self._run(guide, cond, None, t0=t0, alpha_bar=alpha_bar, repeats=repeats,
                     seed=seed, num_samples=num_samples)

  def masked_edit(self, source, mask, *, label=None, strokes=None, t0: float | None = 1.0,
                  alpha_bar: float | None = None, repeats: int = 1, dilate: int = 0,
                  seed: int | jax.Array = 0, num_samples: int = 1) -> np.ndarray:
    """Regenerates the masked region of `source`; the rest is kept exactly.

    Args:
      source: (H, W, 3) / (B, H, W, 3) uint8 or float in [-1, 1].
      mask: (H, W) / (B, H, W) [/ ..., 1] array or PNG path, 0/1 or 0/255 (1 = regenerate).
      label: the (edited) label map (see `sdedit`); None = unconditional.
      strokes: optional image of the source's size painted into the mask (the guide
        inside the mask; default the source itself).
      t0 / alpha_bar: noise level; 1.0 (default) ignores what was inside the mask,
        0.3-0.6 keeps its colours (stroke editing).
      repeats, seed, num_samples: as for `sdedit`.
      dilate: grow the mask by this many pixels first (a blending band at the seam).

    Returns:
      (B * num_samples, H, W, 3) float32; equal to `source` (bit for bit, as float32
      [-1, 1]) wherever the (dilated) mask is 0.
    """
    source = self._images(source, "source")
    m = load_mask(mask, None)
    _check_same_size([("source", source.shape[1:3]), ("mask", m.shape[-2:])])
    if m.ndim == 2:
      m = np.broadcast_to(m, source.shape[:3])
    if m.shape[0] != source.shape[0]:
      raise ValueError(f"mask batch {m.shape[0]} != source batch {source.shape[0]}")
    m = dilate_mask(m, dilate)[..., None]
    guide = source
    if strokes is not None:
      s = self._images(strokes, "strokes")
      _check_same_size([("source", source.shape[1:3]), ("strokes", s.shape[1:3])])
      s = np.broadcast_to(s, source.shape)
      guide = (1.0 - m) * source + m * s
    cond = self._cond(label, source.shape[:3], "label")
    return self._run(guide, cond, m, t0=t0, alpha_bar=alpha_bar, repeats=repeats,
                     seed=seed, num_samples=num_samples)

  # ------------------------------------------------------------------ internals

  def _images(self, x, name: str) -> np.ndarray:
    x = to_float_image(x, name)
    return x[None] if x.ndim == 3 else x

  def _cond(self, label, bhw: tuple[int, int, int], name: str) -> np.ndarray | None:
    """None (null label) or float32 (B, H, W, L)."""
    if label is None:
      return None
    from scdm_jax.data import label_io  # pylint: disable=import-outside-toplevel
    from scdm_jax.data import noisy  # pylint: disable=import-outside-toplevel
    lab = np.asarray(label)
    b, h, w = bhw
    k, l = self.num_classes, self.cond_channels
    if np.issubdtype(lab.dtype, np.integer):
      ids = lab[None] if lab.ndim == 2 else lab
      _check_same_size([("the image", (h, w)), (name, ids.shape[-2:])])
      onehot = label_io.to_one_hot(ids, k)
    else:
      lab = lab[None] if lab.ndim == 3 else lab
      if lab.ndim != 4 or lab.shape[-1] not in (k, l):
        raise ValueError(f"{name}: expected class ids (…, H, W) int, or one-hot (…, H, W, {k})"
                         f" / conditioning (…, H, W, {l}) float, got {lab.dtype} {lab.shape}")
      _check_same_size([("the image", (h, w)), (name, lab.shape[1:3])])
      if lab.shape[-1] == l:
        return np.broadcast_to(lab.astype(np.float32), (b, h, w, l)).copy()
      onehot = lab.astype(np.float32)
      ids = np.where(onehot.max(-1) > 0, onehot.argmax(-1), -1)
    if self.use_instance:
      edge = np.stack([noisy.boundary_map(i) for i in ids]).astype(np.float32)[..., None]
      onehot = np.concatenate([onehot, edge], -1)
    if onehot.shape[0] not in (1, b):
      raise ValueError(f"{name}: batch {onehot.shape[0]} != image batch {b}")
    return np.broadcast_to(onehot, (b, h, w, l)).astype(np.float32)

  def _program(self, start_index: int, repeats: int, masked: bool):
    key = (start_index, repeats, masked)
    if key in self._programs:
      return self._programs[key]
    from flax import nnx  # pylint: disable=import-outside-toplevel
    graphdef, fn_model, k = self._graphdef, self._fn_model, self.num_classes
    settings, diffusion, schedule = self.settings, self.diffusion, self.label_schedule
    progress = self.progress

    def run(state, guide, cond, mask, key):
      apply = fn_model if graphdef is None else nnx.merge(graphdef, state)
      s = dict(settings)
      if cond is None:  # unconditional: CFG would compare the null label with itself
        s["guidance_scale"] = 1.0
        cond = jnp.zeros(guide.shape[:3] + (self.cond_channels,), jnp.float32)
      return sdedit(apply, diffusion, schedule, guide, cond, key, start_index=start_index,
                    num_label_channels=k, mask=mask if masked else None, repeats=repeats,
                    progress=progress, **s)

    bsh = sharding.batch_sharding(self.mesh)
    rep = sharding.replicated(self.mesh)
    fn = jax.jit(run, in_shardings=(self._state_sharding, bsh, bsh, bsh, rep),
                 out_shardings=bsh)
    self._programs[key] = fn
    return fn

  def _run(self, guide, cond, mask, *, t0, alpha_bar, repeats, seed, num_samples):
    k0 = self.start_index(t0, alpha_bar)
    n = max(1, int(num_samples))
    if n > 1:
      guide = np.repeat(guide, n, 0)
      cond = None if cond is None else np.repeat(cond, n, 0)
      mask = None if mask is None else np.repeat(mask, n, 0)
    rows = guide.shape[0]
    total = -(-rows // sharding.num_batch_shards(self.mesh)) * sharding.num_batch_shards(
        self.mesh)
    pad = lambda a: None if a is None else np.concatenate(
        [a, np.zeros((total - rows,) + a.shape[1:], np.float32)]) if total > rows else a
    bsh = sharding.batch_sharding(self.mesh)
    put = lambda a: None if a is None else sharding.device_put_tree(
        np.ascontiguousarray(a, np.float32), bsh)
    key = seed if isinstance(seed, jax.Array) else jax.random.key(int(seed))
    fn = self._program(k0, int(repeats), mask is not None)
    out = fn(self._state, put(pad(guide)), put(pad(cond)), put(pad(mask)), key)
    return sharding.to_host(out)[:rows]


# ---------------------------------------------------------------------------
# --mode edit
# ---------------------------------------------------------------------------


def _edit_settings(config) -> dict[str, Any]:
  ec = dict(EDIT_DEFAULTS)
  if "edit" in config:
    got = config.edit.to_dict() if hasattr(config.edit, "to_dict") else dict(config.edit)
    unknown = set(got) - set(EDIT_DEFAULTS)
    if unknown:
      raise ValueError(f"config.edit has unknown fields {sorted(unknown)}; known: "
                       f"{sorted(EDIT_DEFAULTS)}")
    ec.update(got)
  return ec


def _png_list(path: str, what: str) -> list[str]:
  if os.path.isdir(path):
    files = sorted(os.path.join(path, f) for f in os.listdir(path)
                   if f.lower().endswith((".png", ".jpg", ".jpeg")))
    if not files:
      raise FileNotFoundError(f"config.edit.{what}={path!r}: the folder has no PNG/JPEG files")
    return files
  if not os.path.exists(path):
    raise FileNotFoundError(f"config.edit.{what}={path!r} does not exist")
  return [path]


def _match(guides: list[str], path: str, what: str) -> list[str]:
  """The file of `path` (a file: used for every guide; a folder: same base name)."""
  if not path:
    return [""] * len(guides)
  if not os.path.isdir(path):
    if not os.path.exists(path):
      raise FileNotFoundError(f"config.edit.{what}={path!r} does not exist")
    return [path] * len(guides)
  out = []
  for g in guides:
    stem = os.path.splitext(os.path.basename(g))[0]
    cands = [os.path.join(path, stem + e) for e in (".png", ".jpg", ".jpeg")]
    found = [c for c in cands if os.path.exists(c)]
    if not found:
      raise FileNotFoundError(f"config.edit.{what}={path!r} has no {stem}.png for the guide {g}")
    out.append(found[0])
  return out


def run_edit(config, workdir: str | None) -> dict[str, Any]:
  """`--mode edit`: SDEdit (no `config.edit.mask`) or masked editing, writing PNGs.

  Inputs from `config.edit` (see `EDIT_DEFAULTS` and docs/editing.md): `guide` is a PNG or a
  folder; `mask`, `label` and `strokes` are a single file (used for every guide) or a
  folder with the guides' file names. Weights and sampler settings (checkpoint, sampler,
  guidance_scale, dynamic_threshold, extrapolation, label_mode, seed, batch_size) come
  from `config.sample`, the chain from `config.edit.respacing`. Outputs:
  `<output_dir>/sample_<j>/<name>.png`, plus `<output_dir>/masks/<name>.png` (the mask
  used, after dilation) in masked mode.

  Returns:
    a summary dict (count, output_dir, start_index, steps, alpha_bar).
  """
  from absl import logging  # pylint: disable=import-outside-toplevel
  from scdm_jax import logging_utils  # pylint: disable=import-outside-toplevel
  from scdm_jax import sample as sample_lib  # pylint: disable=import-outside-toplevel
  from scdm_jax import state as state_lib  # pylint: disable=import-outside-toplevel
  from scdm_jax import train as train_lib  # pylint: disable=import-outside-toplevel
  from scdm_jax.data import label_io  # pylint: disable=import-outside-toplevel
  from scdm_jax.models.unet import UNet  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  ec, sc = _edit_settings(config), config.sample
  if not ec["guide"]:
    raise ValueError("--mode edit needs --config.edit.guide=<PNG or folder> (the strokes "
                     "for SDEdit, or the source image for masked editing)")
  guides = _png_list(str(ec["guide"]), "guide")
  masks = _match(guides, str(ec["mask"]), "mask")
  labels = _match(guides, str(ec["label"]), "label")
  strokes = _match(guides, str(ec["strokes"]), "strokes")
  masked = bool(ec["mask"])
  if ec["strokes"] and not masked:
    raise ValueError("config.edit.strokes is for masked editing (set config.edit.mask); for "
                     "SDEdit give the strokes as config.edit.guide")

  # Weights and the label schedule the model was trained with.
  params_pure, meta, where = sample_lib.load_weights(config, workdir)
  label_schedule = sample_lib.label_schedule_for(config, meta)
  mesh = sharding.make_mesh(config.mesh)
  graphs, _ = state_lib.graphs_and_abstract(config)
  params = state_lib.params_from_pure(graphs, params_pure)
  # The UNet has no non-parameter state; its (empty) rest comes from an abstract build.
  rest = nnx.split(nnx.eval_shape(lambda: UNet(graphs.unet_config, rngs=nnx.Rngs(0))),
                   nnx.Param, ...)[2]
  model = nnx.merge(graphs.model, params, rest)
  diffusion = train_lib.make_diffusion(config, respacing=ec["respacing"] or None)

  is_main = jax.process_index() == 0
  bar = logging_utils.ProgressBar(0, "edit", unit="steps", enabled=is_main)
  done = {"steps": 0}  # steps of the batches already finished

  def progress(step, total):
    # Absolute counts: repeated calls (one per device in a sharded program) are harmless.
    bar.update(done["steps"] + min(step, total))

  k = int(config.data.num_classes)
  editor = Editor(model, diffusion, label_schedule, num_classes=k,
                  use_instance=bool(config.data.use_instance), mesh=mesh,
                  sampler=sc.sampler, eta=float(ec["eta"]),
                  guidance_scale=float(sc.guidance_scale),
                  dynamic_threshold=float(sc.dynamic_threshold),
                  extrapolation=float(sc.extrapolation), label_mode=sc.label_mode,
                  progress=progress)
  size = int(config.data.image_size)
  alpha_bar = float(ec["alpha_bar"]) or None
  k0 = editor.start_index(float(ec["t0"]), alpha_bar)
  palette = config.data.get("class_table", "") or config.data.name
  fmt = sc.get("label_format", "auto")
  out_dir = ec["output_dir"] or os.path.join(workdir or ".", "edits")
  n_per = max(1, int(ec["num_samples"]))
  batch = max(1, int(sc.batch_size) // n_per)
  base_key = jax.random.key(int(sc.seed))
  steps_per_batch = int(ec["repeats"]) * (k0 + 1)
  bar.total = -(-len(guides) // batch) * steps_per_batch
  logging.info("Editing %d image(s) from %s: %s, t0=%s -> start index %d of %d (alpha-bar "
               "%.4f, timestep %d), %d repeat(s).", len(guides), where,
               "masked" if masked else "SDEdit", ec["t0"], k0, diffusion.num_timesteps,
               diffusion.table("alphas_cumprod")[k0], diffusion.timestep_map[k0],
               int(ec["repeats"]))
  written = 0
  for bi in range(0, len(guides), batch):
    idx = range(bi, min(bi + batch, len(guides)))
    imgs, conds, ms, sts, names = [], [], [], [], []
    for i in idx:
      img = load_image(guides[i])
      sizes = [(f"guide {guides[i]}", img.shape[:2])]
      if labels[i]:
        ids, _ = label_io.load_label_map(labels[i], num_classes=k,
                                         palette=None if fmt == "ids" else palette)
        sizes.append((f"label map {labels[i]}", ids.shape))
        conds.append(ids)
      if masked:
        m = load_mask(masks[i])
        sizes.append((f"mask {masks[i]}", m.shape))
        ms.append(m)
      if strokes[i]:
        st = load_image(strokes[i])
        sizes.append((f"strokes {strokes[i]}", st.shape[:2]))
        sts.append(st)
      _check_same_size(sizes)
      if img.shape[:2] != (size, size):
        raise ValueError(f"guide {guides[i]} is {img.shape[0]}x{img.shape[1]} but the model "
                         f"works at {size}x{size} (config.data.image_size); resize the "
                         "inputs (nearest for masks and label maps)")
      imgs.append(img)
      names.append(os.path.splitext(os.path.basename(guides[i]))[0])
    guide = np.stack(imgs)
    label = np.stack(conds).astype(np.int32) if conds else None
    key = jax.random.fold_in(base_key, bi)
    if masked:
      out = editor.masked_edit(guide, np.stack(ms), label=label,
                               strokes=np.stack(sts) if sts else None, t0=float(ec["t0"]),
                               alpha_bar=alpha_bar, repeats=int(ec["repeats"]),
                               dilate=int(ec["dilate"]), seed=key, num_samples=n_per)
    else:
      out = editor.sdedit(guide, label=label, t0=float(ec["t0"]), alpha_bar=alpha_bar,
                          repeats=int(ec["repeats"]), seed=key, num_samples=n_per)
    if is_main:
      out8 = logging_utils.to_uint8(out)
      for r, name in enumerate(names):
        for j in range(n_per):
          logging_utils.save_png(os.path.join(out_dir, f"sample_{j}", f"{name}.png"),
                                 out8[r * n_per + j])
        if masked:
          m = dilate_mask(ms[r], int(ec["dilate"]))
          logging_utils.save_png(os.path.join(out_dir, "masks", f"{name}.png"),
                                 np.repeat((m * 255).astype(np.uint8)[..., None], 3, -1))
    written += len(names)
    done["steps"] += steps_per_batch
  bar.close()
  logging.info("Wrote %d x %d edited images to %s.", written, n_per, out_dir)
  return {"count": written, "samples_per_input": n_per, "output_dir": out_dir,
          "start_index": k0, "steps": int(ec["repeats"]) * (k0 + 1),
          "alpha_bar": float(diffusion.table("alphas_cumprod")[k0]), "masked": masked}
