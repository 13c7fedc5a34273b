"""Paint by Example inference: exemplar-conditioned latent inpainting, one jitted program.

`PaintPipeline.load(path)` takes any of three sources, told apart by their files:

* a diffusers-format Paint by Example folder (`model_index.json`; the Hugging Face
  release's layout, below), read by `from_pretrained`;
* an original Paint by Example checkpoint file (`model.ckpt`, LDM names; `.ckpt`, `.pt`,
  `.pth` or `.safetensors`), with the configs of a diffusers folder (`config=`) or the
  released ones (`released_pipeline_configs()`);
* an inference export (`params/` + `meta/`, written by `save_export` through
  `scdm_jax.checkpointing`, e.g. by `python -m scdm_jax.tools.convert_pbe SRC OUT`), read
  by `from_export` straight into the modules' abstract state (no random init), already
  replicated over the mesh.

The diffusers folder:

    model_index.json
    unet/config.json               + diffusion_pytorch_model.safetensors (or .bin)
    vae/config.json                + diffusion_pytorch_model.safetensors (or .bin)
    image_encoder/config.json      + model.safetensors (or pytorch_model.bin)
    scheduler/scheduler_config.json
    feature_extractor/preprocessor_config.json

Weights go through the torch-free readers of `scdm_jax.io.weights` (a pickled `.bin` is
unpickled with a restricted unpickler). Host preprocessing (`scdm_jax.data.exemplar`)
makes the CLIP pixels of the exemplar, the keep mask (1 = keep, 0 = hole), the masked
image in [-1, 1] and the latent-resolution mask. Then ONE compiled program runs:

1. the exemplar encoder -> context token c, and the learned null token v;
2. the VAE posterior of the masked image -> masked latents (a posterior sample drawn
   with an explicit key, as diffusers and the official code do, or its mean), times
   `scaling_factor`;
3. the reverse chain (DDIM or PNDM/PLMS, `lax.scan`): each step one batched UNet call on
   `concat(z_t, masked latents, mask)` (9 channels) with context `[v, c]`, guided as
   eps_v + s (eps_c - eps_v) (no guidance, one call on c, when s <= 1, as diffusers);
4. the VAE decoder -> images in [0, 1]; optionally the unmasked source pixels are pasted
   back (the released script does not; it is an easy fidelity fix).

The batch is sharded over every device of a `("data", "fsdp")` mesh (`scdm_jax.sharding`),
the weights replicated; a batch that does not divide the device count is padded with
copies of its last example. Randomness is per example: example `i` draws from
`fold_in(stream, i)`, so its result does not depend on the batch it is in.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scdm_jax import checkpointing, compile_options, sharding
from scdm_jax.io import fileio
from scdm_jax.data import exemplar
from scdm_jax.diffusion import ldm_schedulers
from scdm_jax.io import weights
from scdm_jax.models import ldm_keys, pbe_import
from scdm_jax.models.autoencoder_kl import AutoencoderKL, VAEConfig
from scdm_jax.models.clip_vision import CLIPVisionConfig
from scdm_jax.models.pbe_encoder import PaintByExampleImageEncoder, context_tokens_of
from scdm_jax.models.sd_unet import SDUNet, SDUNetConfig

SAMPLERS = ("ddim", "pndm")
POSTERIORS = ("sample", "mean")

# Weight file names tried per component, in order.
_WEIGHT_FILES = {
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "image_encoder": ("model.safetensors", "pytorch_model.bin"),
}

# The config dicts of a pipeline (and of an export's meta["model"]), by component.
CONFIG_FILES = {
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "image_encoder": "image_encoder/config.json",
    "scheduler": "scheduler/scheduler_config.json",
    "feature_extractor": "feature_extractor/preprocessor_config.json",
}
MODULES = ("unet", "vae", "image_encoder")
EXPORT_KIND = "paint_by_example"
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".safetensors")

# The released pipeline's (Fantasy-Studio/Paint-by-Example) scheduler/ and
# feature_extractor/ configs: an original model.ckpt carries no configs.
RELEASED_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None, "clip_sample": False,
}
RELEASED_FEATURE_EXTRACTOR_CONFIG: dict[str, Any] = {
    "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "image_mean": list(exemplar.OPENAI_CLIP_MEAN), "image_std": list(exemplar.OPENAI_CLIP_STD),
    "resample": 3, "size": 224,
}


def released_pipeline_configs() -> dict[str, dict[str, Any]]:
  """The released pipeline's five config dicts (fresh copies), keyed as `CONFIG_FILES`."""
  out = copy.deepcopy(pbe_import.RELEASED_PBE_CONFIGS)
  out["scheduler"] = copy.deepcopy(RELEASED_SCHEDULER_CONFIG)
  out["feature_extractor"] = copy.deepcopy(RELEASED_FEATURE_EXTRACTOR_CONFIG)
  return out


def _read_json(path: str, what: str) -> dict[str, Any]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: missing ({what} of the Paint by Example folder)")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_component_weights(folder: str, component: str) -> dict[str, np.ndarray]:
  """The state dict of one component folder (single file or a sharded `*.index.json`)."""
  sub = os.path.join(folder, component)
  if not os.path.isdir(sub):
    raise FileNotFoundError(f"{sub}: missing (the {component}/ folder of the Paint by "
                            "Example pipeline)")
  for name in _WEIGHT_FILES[component]:
    path = os.path.join(sub, name)
    if os.path.isfile(path):
      return weights.read_tensors(path)
    index = path + ".index.json"
    if os.path.isfile(index):
      shards = sorted(set(_read_json(index, "weight index").get("weight_map", {}).values()))
      out: dict[str, np.ndarray] = {}
      for shard in shards:
        out.update(weights.read_tensors(os.path.join(sub, shard)))
      return out
  raise FileNotFoundError(f"{sub}: no weights (looked for {' / '.join(_WEIGHT_FILES[component])}"
                          " and sharded .index.json)")


def read_pipeline_configs(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
  """The five config dicts of a diffusers Paint by Example folder (keyed as `CONFIG_FILES`).

  Raises:
    FileNotFoundError / ValueError: (one line) not a folder, or a missing / invalid file.
  """
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{folder}: not a folder (expected a diffusers Paint by Example "
                            "pipeline folder)")
  _read_json(os.path.join(folder, "model_index.json"), "the pipeline index")
  return {c: _read_json(os.path.join(folder, f), f) for c, f in CONFIG_FILES.items()}


def parse_configs(configs: Mapping[str, Mapping[str, Any]], where: str):
  """The five config dicts -> (unet, vae, clip configs, scheduler dict, preprocess config).

  Args:
    configs: keyed as `CONFIG_FILES` (a folder's files, an export's meta["model"]).
    where: how to name the source in error messages.

  Raises:
    ValueError: (one line) a missing, unsupported or inconsistent config.
  """
  missing = [c for c in CONFIG_FILES if not isinstance(configs.get(c), Mapping)]
  if missing:
    raise ValueError(f"{where}: no config for {', '.join(missing)}")
  unet_cfg = SDUNetConfig.from_diffusers(configs["unet"])
  vae_cfg = VAEConfig.from_diffusers(configs["vae"])
  clip_cfg = CLIPVisionConfig.from_transformers(configs["image_encoder"])
  sched = dict(configs["scheduler"])
  ldm_schedulers.SchedulerConfig.from_dict(sched, "pndm")  # refuse bad settings early
  pre = exemplar.ClipPreprocessConfig.from_dict(configs["feature_extractor"])
  if (pre.crop_height, pre.crop_width) != (clip_cfg.image_size,) * 2:
    raise ValueError(f"{where}: feature_extractor crop {pre.crop_height}x{pre.crop_width} "
                     f"!= image_encoder image_size {clip_cfg.image_size}")
  return unet_cfg, vae_cfg, clip_cfg, sched, pre


def _flat_shapes(tree: Mapping[str, Any], prefix: str = "") -> dict[str, list[int]]:
  """`{"unet/conv_in/kernel": [3, 3, 9, 32], ...}` of a nested dict of arrays."""
  out: dict[str, list[int]] = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(_flat_shapes(v, name + "/"))
    else:
      out[name] = [int(d) for d in v.shape]
  return out


def _check_export_shapes(want: dict[str, list[int]], stored: Mapping[str, Any],
                         where: str) -> None:
  """One-line error when the config's parameters do not fit the export's."""
  missing = sorted(set(want) - set(stored))
  unexpected = sorted(set(stored) - set(want))
  wrong = [f"{n} {tuple(stored[n])} (config: {tuple(want[n])})" for n in sorted(want)
           if n in stored and list(stored[n]) != want[n]]
  parts = []
  for what, names in (("missing", missing), ("unexpected", unexpected),
                      ("of another shape", wrong)):
    if names:
      more = f" (+{len(names) - 3} more)" if len(names) > 3 else ""
      parts.append(f"{len(names)} parameter(s) {what}: {', '.join(names[:3])}{more}")
  if parts:
    raise ValueError(f"{where}: the weights do not fit the config: {'; '.join(parts)}")


def _place(state: Any, mesh: jax.sharding.Mesh) -> Any:
  """Replicates `state` over `mesh`; arrays already placed so (an export) are kept as is."""
  rep = sharding.replicated(mesh)

  def put(x):
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(rep, x.ndim):
      return x
    return sharding.device_put_tree(x, rep)

  return jax.tree.map(put, state)


@dataclasses.dataclass(frozen=True)
class PaintOptions:
  """The static settings of one compiled chain (a new value compiles a new program)."""

  sampler: str = "pndm"
  num_steps: int = 50
  guidance_scale: float = 5.0
  eta: float = 0.0
  paste_back: bool = False
  posterior: str = "sample"
  clip_sample: bool | None = None  # DDIM x0 clipping; None: the config's value, else off
  given_latents: bool = False
  report_progress: bool = False  # call the host progress hook after every network call


class PaintPipeline:
  """Paint by Example with NNX modules; see the module docstring.

  Attributes:
    unet, vae, image_encoder: the NNX modules (weights loaded).
    unet_config, vae_config, clip_config: their architectures.
    scheduler_config: the raw scheduler_config.json dict.
    preprocess: the exemplar processor settings (feature_extractor/).
    configs: the five raw config dicts (keyed as `CONFIG_FILES`; None when built
      without them), what `save_export` writes.
    source: where the weights came from (for an export's meta).
    mesh: the device mesh the batch is sharded over.
  """

  def __init__(self, unet, vae, image_encoder, *, unet_config: SDUNetConfig,
               vae_config: VAEConfig, clip_config: CLIPVisionConfig,
               scheduler_config: Mapping[str, Any],
               preprocess: exemplar.ClipPreprocessConfig, mesh: jax.sharding.Mesh | None = None,
               configs: Mapping[str, Mapping[str, Any]] | None = None, source: str = ""):
    """Wraps loaded modules. Most callers use `load` (or `from_pretrained`)."""
    self.unet, self.vae, self.image_encoder = unet, vae, image_encoder
    self.unet_config, self.vae_config, self.clip_config = unet_config, vae_config, clip_config
    self.scheduler_config = dict(scheduler_config)
    self.preprocess = preprocess
    self.configs = copy.deepcopy(dict(configs)) if configs is not None else None
    self.source = source
    lat = vae_config.latent_channels
    if unet_config.in_channels != 2 * lat + 1:
      raise ValueError(f"unet in_channels={unet_config.in_channels}, Paint by Example needs "
                       f"2 x latent_channels + 1 = {2 * lat + 1} (z_t, masked latents, mask)")
    if unet_config.cross_attention_dim != clip_config.projection_dim:
      raise ValueError(f"unet cross_attention_dim={unet_config.cross_attention_dim} != image "
                       f"encoder projection_dim={clip_config.projection_dim}")
    self.mesh = mesh if mesh is not None else sharding.make_mesh({"data": -1, "fsdp": 1})
    graphdef, state = nnx.split((unet, vae, image_encoder))
    self._graphdef = graphdef
    self._state = _place(state, self.mesh)
    # The modules share the replicated arrays (no second copy of the weights).
    nnx.update((unet, vae, image_encoder), self._state)
    self._programs: dict[Any, Any] = {}
    self._progress = None  # the host progress hook of the current paint() call

  # ---------------------------------------------------------------------- loading

  @classmethod
  def load(cls, path: str | os.PathLike, *, config: str | os.PathLike | None = None,
           dtype: Any = jnp.float32, param_dtype: Any = None,
           mesh: jax.sharding.Mesh | None = None,
           attention_implementation: str | None = None) -> PaintPipeline:
    """Loads a diffusers folder, an original checkpoint file or an export (by its files).

    Args:
      path: a folder with `model_index.json` (diffusers), a folder with `params/` and
        `meta/` (an export), or a `.ckpt` / `.pt` / `.pth` / `.safetensors` file (the
        original LDM-named checkpoint).
      config: only with a checkpoint file: a diffusers folder whose configs to use
        (its weight files are not needed); default: the released configs.
      dtype: compute dtype (float32 or bfloat16).
      param_dtype: parameter dtype; None: an export's stored dtype, else float32.
      mesh: device mesh (default: every device on the data axis).
      attention_implementation: passed to the modules (None, "xla", "cudnn").

    Raises:
      FileNotFoundError / ValueError: (one line) an unknown or incomplete source, or
        weights that do not fit the configs.
    """
    path = os.fspath(path)
    kw = dict(dtype=dtype, mesh=mesh, attention_implementation=attention_implementation)
    is_file = os.path.isfile(path)
    if config is not None and not is_file:
      raise ValueError(f"{path}: config= is only for an original checkpoint file")
    if is_file:
      if not path.endswith(CHECKPOINT_SUFFIXES):
        raise ValueError(f"{path}: not a Paint by Example checkpoint (expected a file ending "
                         f"in {' / '.join(CHECKPOINT_SUFFIXES)}, or a folder)")
      configs = (read_pipeline_configs(config) if config is not None
                 else released_pipeline_configs())
      return cls._from_ldm_checkpoint(path, configs, param_dtype=param_dtype or jnp.float32,
                                      **kw)
    if not os.path.isdir(path):
      raise FileNotFoundError(f"{path}: no such file or folder")
    if os.path.isfile(os.path.join(path, "model_index.json")):
      return cls.from_pretrained(path, param_dtype=param_dtype or jnp.float32, **kw)
    if os.path.exists(os.path.join(path, "params")) or os.path.exists(
        os.path.join(path, "meta")):
      return cls.from_export(path, param_dtype=param_dtype, **kw)
    raise FileNotFoundError(f"{path}: not a Paint by Example source (no model_index.json of a "
                            "diffusers folder, no params/ + meta/ of an export)")

  @classmethod
  def from_pretrained(cls, folder: str | os.PathLike, *, dtype: Any = jnp.float32,
                      param_dtype: Any = jnp.float32, mesh: jax.sharding.Mesh | None = None,
                      attention_implementation: str | None = None,
                      ldm_checkpoint: str | os.PathLike | None = None) -> PaintPipeline:
    """Loads a diffusers-format Paint by Example folder.

    Args:
      folder: the pipeline folder (see the module docstring).
      dtype: compute dtype (float32 or bfloat16).
      param_dtype: parameter dtype.
      mesh: device mesh (default: every device on the data axis).
      attention_implementation: passed to the modules (None, "xla", "cudnn").
      ldm_checkpoint: optional original Paint by Example `model.ckpt` (LDM names, read
        with the restricted unpickler and renamed by `scdm_jax.models.ldm_keys`); its
        weights replace the folder's, whose configs are still used (the folder then
        needs no weight files).

    Raises:
      FileNotFoundError / ValueError: (one line) a missing part or unusable weights.
    """
    folder = os.fspath(folder)
    configs = read_pipeline_configs(folder)
    kw = dict(dtype=dtype, param_dtype=param_dtype, mesh=mesh,
              attention_implementation=attention_implementation)
    if ldm_checkpoint is not None:
      return cls._from_ldm_checkpoint(os.fspath(ldm_checkpoint), configs, where=folder, **kw)
    parse_configs(configs, folder)  # config errors before reading any weights
    states = {c: read_component_weights(folder, c) for c in MODULES}
    return cls._from_state_dicts(configs, states, lambda c: os.path.join(folder, c),
                                 where=folder, source=f"diffusers folder {os.path.abspath(folder)}",
                                 **kw)

  @classmethod
  def _from_ldm_checkpoint(cls, ckpt: str, configs, *, where: str | None = None, **kw):
    """An original LDM-named checkpoint with the given config dicts."""
    parse_configs(configs, where or ckpt)
    if not os.path.isfile(ckpt):
      raise FileNotFoundError(f"{ckpt}: no such checkpoint file")
    split = ldm_keys.convert_ldm_checkpoint(weights.read_tensors(ckpt),
                                            unet_config=configs["unet"], vae_config=configs["vae"])
    states = {"unet": split.unet, "vae": split.vae, "image_encoder": split.image_encoder}
    return cls._from_state_dicts(configs, states, lambda c: f"{ckpt} ({c})", where=where or ckpt,
                                 source=f"original checkpoint {os.path.abspath(ckpt)}", **kw)

  @classmethod
  def _from_state_dicts(cls, configs, states, sub, *, where: str, source: str, dtype,
                        param_dtype, mesh, attention_implementation) -> PaintPipeline:
    unet_cfg, vae_cfg, clip_cfg, sched, pre = parse_configs(configs, where)
    kw = dict(dtype=dtype, param_dtype=param_dtype,
              attention_implementation=attention_implementation)
    unet = pbe_import.unet_from_state_dict(states["unet"], unet_cfg, source=sub("unet"), **kw)
    vae = pbe_import.vae_from_state_dict(states["vae"], vae_cfg, source=sub("vae"), **kw)
    enc = pbe_import.image_encoder_from_state_dict(
        states["image_encoder"], clip_cfg, source=sub("image_encoder"), **kw)
    return cls(unet, vae, enc, unet_config=unet_cfg, vae_config=vae_cfg, clip_config=clip_cfg,
               scheduler_config=sched, preprocess=pre, mesh=mesh, configs=configs,
               source=source)

  @classmethod
  def from_export(cls, directory: str | os.PathLike, *, dtype: Any = jnp.float32,
                  param_dtype: Any = None, mesh: jax.sharding.Mesh | None = None,
                  attention_implementation: str | None = None) -> PaintPipeline:
    """Loads an export written by `save_export`.

    The modules are built abstractly (`nnx.eval_shape`, no random init) and the weights
    are restored by orbax straight into their replicated sharding over `mesh`.

    Args:
      directory: the export folder (`params/`, `meta/`).
      dtype: compute dtype.
      param_dtype: parameter dtype (None: the stored one; another is cast on restore).
      mesh: device mesh (default: every device on the data axis).
      attention_implementation: passed to the modules.

    Raises:
      FileNotFoundError / ValueError: (one line) not an export, not a Paint by Example
        one, or a config that does not fit the stored weights.
    """
    directory = os.fspath(directory)
    meta = checkpointing.load_export_meta(directory)
    model = meta.get("model")
    if not isinstance(model, Mapping) or model.get("kind") != EXPORT_KIND:
      kind = model.get("kind") if isinstance(model, Mapping) else None
      raise ValueError(f"{directory}: not a Paint by Example export (meta model kind "
                       f"{kind!r}, expected {EXPORT_KIND!r})")
    configs = {c: model.get(c) for c in CONFIG_FILES}
    unet_cfg, vae_cfg, clip_cfg, sched, pre = parse_configs(configs, directory)
    if param_dtype is None:
      param_dtype = jnp.dtype(meta.get("param_dtype", "float32"))
    kw = dict(dtype=dtype, param_dtype=param_dtype,
              attention_implementation=attention_implementation)
    rngs = lambda: nnx.Rngs(0)  # only traced: eval_shape allocates nothing
    modules = nnx.eval_shape(lambda: (
        SDUNet(unet_cfg, rngs=rngs(), **kw),
        AutoencoderKL(vae_cfg, rngs=rngs(), **kw),
        PaintByExampleImageEncoder(clip_cfg, rngs=rngs(),
                                   context_tokens=context_tokens_of(configs["image_encoder"]),
                                   **kw)))
    states = {c: nnx.state(m) for c, m in zip(MODULES, modules)}
    abstract = {c: nnx.to_pure_dict(st) for c, st in states.items()}
    if isinstance(meta.get("param_shapes"), Mapping):
      _check_export_shapes(_flat_shapes(abstract), meta["param_shapes"], directory)
    mesh = mesh if mesh is not None else sharding.make_mesh({"data": -1, "fsdp": 1})
    rep = sharding.replicated(mesh)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
                          abstract)
    try:
      params, _ = checkpointing.load_export(directory, target)
    except (ValueError, KeyError, TypeError) as e:  # orbax: tree or shape mismatch
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise ValueError(f"{directory}: the weights do not fit the config ({first})") from None
    for c, m in zip(MODULES, modules):
      nnx.replace_by_pure_dict(states[c], params[c])
      nnx.update(m, states[c])
    return cls(*modules, unet_config=unet_cfg, vae_config=vae_cfg, clip_config=clip_cfg,
               scheduler_config=sched, preprocess=pre, mesh=mesh, configs=configs,
               source=str(meta.get("source", "")))

  def params(self) -> dict[str, Any]:
    """`{"unet": ..., "vae": ..., "image_encoder": ...}` nested dicts of the weights."""
    return {c: nnx.to_pure_dict(nnx.state(m))
            for c, m in zip(MODULES, (self.unet, self.vae, self.image_encoder))}

  def param_counts(self) -> dict[str, int]:
    """Parameter counts (see `pbe_import.param_counts`)."""
    return pbe_import.param_counts(self.unet_config, self.vae_config, self.clip_config)

  def save_export(self, directory: str | os.PathLike, *, source: str | None = None) -> str:
    """Writes the pipeline as an inference export (`scdm_jax.checkpointing.save_export`).

    meta: `{"model": {"kind": "paint_by_example", "unet", "vae", "image_encoder",
    "scheduler", "feature_extractor": config dicts}, "source", "param_dtype",
    "param_counts", "param_shapes"}` (the shapes let `from_export` name the parameters a
    changed config no longer fits before restoring anything).

    Args:
      directory: target folder (replaced if it exists).
      source: the meta's source line (default: where the weights were loaded from).

    Returns:
      The absolute path written.
    """
    if self.configs is None:
      raise ValueError("save_export: this pipeline was built without its config dicts "
                       "(configs=); load it with PaintPipeline.load")
    params = self.params()
    dtypes = sorted({str(x.dtype) for x in jax.tree.leaves(params)})
    meta = {
        "model": {"kind": EXPORT_KIND, **{c: self.configs[c] for c in CONFIG_FILES}},
        "source": source if source is not None else self.source,
        "param_dtype": dtypes[0] if len(dtypes) == 1 else "mixed",
        "param_counts": self.param_counts(),
        "param_shapes": _flat_shapes(params),
    }
    return checkpointing.save_export(directory, params, meta)

  # ------------------------------------------------------------------- host stages

  def exemplar_pixel_values(self, exemplars_u8: Sequence[Any] | np.ndarray, *,
                            mode: str = "processor") -> np.ndarray:
    """(B, h, w, 3) CLIP pixels ("processor": the release's CLIPImageProcessor;
    "squash": the official scripts' plain resize)."""
    return exemplar.exemplar_pixel_values(exemplars_u8, self.preprocess, mode=mode)

  def prepare_mask(self, images_u8, masks_u8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(keep_mask, masked_image, image)`; see `exemplar.prepare_mask_and_masked_image`."""
    keep, masked, image = exemplar.prepare_mask_and_masked_image(images_u8, masks_u8)
    f = self.vae_config.downsample_factor
    if keep.shape[1] % f or keep.shape[2] % f:
      raise ValueError(f"image size {keep.shape[1]}x{keep.shape[2]} is not divisible by the "
                       f"VAE downsampling factor {f}")
    return keep, masked, image

  def mask_latents(self, keep: np.ndarray, method: str = "nearest") -> np.ndarray:
    """The keep mask at the latent resolution (nearest: diffusers; bilinear: official)."""
    f = self.vae_config.downsample_factor
    return exemplar.resize_mask(keep, (keep.shape[1] // f, keep.shape[2] // f), method)

  def scheduler(self, sampler: str, num_steps: int, *, eta: float = 0.0,
                clip_sample: bool | None = None) -> ldm_schedulers.LDMScheduler:
    """The scheduler of `sampler` ("ddim" / "pndm") from the folder's scheduler config.

    DDIM reads the config with DDIMScheduler's defaults for the fields a PNDM config lacks
    (as diffusers' `DDIMScheduler.from_config`), except x0 clipping: `clip_sample` None
    means the config's own `clip_sample` or else off (LDM's DDIM never clips; diffusers'
    class default would clip to [-1, 1], which the fixture's DDIM chain does not).
    """
    if sampler not in SAMPLERS:
      raise ValueError(f"sampler {sampler!r} is unknown; use one of {SAMPLERS}")
    cfg = ldm_schedulers.SchedulerConfig.from_dict(self.scheduler_config, sampler)
    if sampler == "ddim":
      if clip_sample is None:
        clip_sample = bool(self.scheduler_config.get("clip_sample", False))
      cfg = dataclasses.replace(cfg, clip_sample=bool(clip_sample))
    return ldm_schedulers.make_scheduler(cfg, num_steps, eta=eta)

  # ---------------------------------------------------------------- device stages

  def _report_progress(self, call, total) -> None:
    if self._progress is not None:
      self._progress(int(call), int(total))

  def _modules(self, state):
    return nnx.merge(self._graphdef, state)

  def _program(self, name: str, fn, static: Any = None):
    key = (name, static)
    if key not in self._programs:
      self._programs[key] = jax.jit(
          functools.partial(fn, self, static) if static is not None
          else functools.partial(fn, self), compiler_options=compile_options.compiler_options())
    return self._programs[key]

  def _run(self, name, fn, *batch_args, static=None, extra=()):
    """Runs a jitted stage on batch-sharded (padded) inputs; returns host numpy outputs."""
    b = batch_args[0].shape[0]
    padded = _pad_batch([np.asarray(a) for a in batch_args], sharding.num_batch_shards(self.mesh))
    shard = sharding.batch_sharding(self.mesh)
    dev = sharding.device_put_tree(padded, [shard] * len(padded))
    out = self._program(name, fn, static)(self._state, *dev, *extra)
    return jax.tree.map(lambda x: sharding.to_host(x)[:b], out)

  def encode_exemplars(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, h, w, 3) CLIP pixels -> (cond (B, 1, D), uncond (B, 1, D)) context tokens."""
    return self._run("encode", _encode_fn, np.asarray(pixel_values, np.float32))

  def vae_posterior(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, H, W, 3) image in [-1, 1] -> the posterior (mean, std), unscaled."""
    return self._run("posterior", _posterior_fn, np.asarray(image, np.float32))

  def masked_image_latents(self, masked_image: np.ndarray, *, posterior: str = "sample",
                           key: jax.Array | None = None) -> np.ndarray:
    """The UNet's masked-image latents: scaling_factor x (posterior sample or mean)."""
    _check_posterior(posterior, key)
    idx = np.arange(np.asarray(masked_image).shape[0], dtype=np.int32)
    key = jax.random.key(0) if key is None else key
    return self._run("masked_latents", _masked_latents_fn, np.asarray(masked_image, np.float32),
                     idx, static=posterior, extra=(key,))

  def unet_eps(self, sample: np.ndarray, timestep, context: np.ndarray) -> np.ndarray:
    """One UNet call: (B, h, w, 9) input, a timestep, (B, S, D) context -> (B, h, w, 4)."""
    t = np.broadcast_to(np.asarray(timestep, np.int32), (np.asarray(sample).shape[0],))
    return self._run("unet", _unet_fn, np.asarray(sample, np.float32), t,
                     np.asarray(context, np.float32))

  def decode(self, latents: np.ndarray, *, to_unit: bool = True) -> np.ndarray:
    """UNet latents -> images: in [0, 1] (`to_unit`, clipped) or the raw decoder output."""
    return self._run("decode", _decode_fn, np.asarray(latents, np.float32), static=bool(to_unit))

  # ------------------------------------------------------------------ the program

  def paint(self, images_u8, masks_u8, exemplars_u8, *, key: jax.Array | None = None,
            num_steps: int = 50, guidance_scale: float = 5.0, sampler: str = "pndm",
            eta: float = 0.0, paste_back: bool = False, latents: np.ndarray | None = None,
            posterior: str = "sample", mask_resize: str = "nearest",
            exemplar_mode: str = "processor", clip_sample: bool | None = None,
            return_latents: bool = False, progress=None):
    """Repaints the masked region of each image with its exemplar's object.

    Args:
      images_u8: (B, H, W, 3) uint8 source images (H, W divisible by the VAE factor).
      masks_u8: (B, H, W) uint8 masks (or one (H, W) for all): white (> 127) = repaint.
      exemplars_u8: B uint8 (h, w, 3) exemplars (a list of any sizes, or an array).
      key: PRNG key for the initial latents, the posterior sample and DDIM's eta noise
        (needed unless `latents` is given, `posterior="mean"` and eta is 0).
      num_steps: inference steps N (PNDM makes N + 1 network calls).
      guidance_scale: s; <= 1 runs without guidance (one UNet call on c per step).
      sampler: "pndm" (PLMS with skip_prk_steps: the official sampler) or "ddim".
      eta: DDIM noise scale.
      paste_back: replace the kept region of the output by the source pixels.
      latents: optional (B, H/f, W/f, 4) initial latents x_T (default: drawn from `key`).
      posterior: "sample" (diffusers, official) or "mean" for the masked-image latents.
      mask_resize: "nearest" (diffusers) or "bilinear" (official) for the mask channel.
      exemplar_mode: "processor" or "squash" (see `exemplar_pixel_values`).
      clip_sample: DDIM x0 clipping (None: the scheduler config's value, else off).
      return_latents: also return the final latents.
      progress: optional host function `progress(call, total)` called after every network
        call of the chain (total = the scheduler's number of calls).

    Returns:
      (B, H, W, 3) float32 images in [0, 1]; with `return_latents`, `(images, latents)`.
    """
    opts = PaintOptions(sampler=sampler, num_steps=int(num_steps),
                        guidance_scale=float(guidance_scale), eta=float(eta),
                        paste_back=bool(paste_back), posterior=posterior,
                        clip_sample=clip_sample, given_latents=latents is not None,
                        report_progress=progress is not None)
    self.scheduler(sampler, num_steps, eta=eta, clip_sample=clip_sample)  # validate on host
    _check_posterior(posterior, key)
    needs_key = latents is None or (sampler == "ddim" and opts.eta > 0)
    if needs_key and key is None:
      raise ValueError("paint: a PRNG key is needed for the initial latents / eta noise "
                       "(or pass latents=)")
    key = jax.random.key(0) if key is None else key
    keep, masked, image = self.prepare_mask(images_u8, masks_u8)
    b = keep.shape[0]
    pixels = self.exemplar_pixel_values(exemplars_u8, mode=exemplar_mode)
    if pixels.shape[0] != b:
      raise ValueError(f"paint: {pixels.shape[0]} exemplars for {b} images")
    mask_lat = self.mask_latents(keep, mask_resize)
    lat_shape = mask_lat.shape[:3] + (self.vae_config.latent_channels,)
    if latents is None:
      latents = np.zeros(lat_shape, np.float32)
    else:
      latents = np.asarray(latents, np.float32)
      if latents.shape != lat_shape:
        raise ValueError(f"paint: latents must have shape {lat_shape}, got {latents.shape}")
    source01 = (image + 1) / 2
    idx = np.arange(b, dtype=np.int32)
    # The compiled chain calls one fixed hook; the callable changes per call without
    # changing the program.
    self._progress = progress
    images, final = self._run("paint", _paint_fn, pixels, masked, mask_lat, keep, source01,
                              latents, idx, static=opts, extra=(key,))
    return (images, final) if return_latents else images


def _check_posterior(posterior: str, key) -> None:
  if posterior not in POSTERIORS:
    raise ValueError(f"posterior {posterior!r} is unknown; use one of {POSTERIORS}")
  if posterior == "sample" and key is None:
    raise ValueError("posterior='sample' draws from the VAE posterior: pass key= "
                     "(or posterior='mean')")


def _pad_batch(arrays: list[np.ndarray], multiple: int) -> list[np.ndarray]:
  b = arrays[0].shape[0]
  pad = -b % multiple
  if not pad:
    return arrays
  return [np.concatenate([a, np.repeat(a[-1:], pad, 0)], 0) for a in arrays]


def _per_example_normal(key, idx, shape):
  # Example i draws from fold_in(key, i): independent of the batch it is in.
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), shape,
                                              jnp.float32))(idx)


# Pure stage functions (jitted by PaintPipeline._program; `state` is the replicated weights).

def _encode_fn(pipe: PaintPipeline, state, pixels):
  _, _, enc = pipe._modules(state)
  cond = enc(pixels)
  return cond, jnp.broadcast_to(enc.uncond_embeddings(pixels.shape[0]), cond.shape)


def _posterior_fn(pipe: PaintPipeline, state, image):
  _, vae, _ = pipe._modules(state)
  return vae.encode(image)


def _latents_from_posterior(pipe, vae, image, idx, posterior, key):
  mean, std = vae.encode(image)
  z = mean if posterior == "mean" else mean + std * _per_example_normal(key, idx,
                                                                        mean.shape[1:])
  return pipe.vae_config.scaling_factor * z


def _masked_latents_fn(pipe: PaintPipeline, posterior, state, image, idx, key):
  _, vae, _ = pipe._modules(state)
  return _latents_from_posterior(pipe, vae, image, idx, posterior, key)


def _unet_fn(pipe: PaintPipeline, state, sample, t, context):
  unet, _, _ = pipe._modules(state)
  return unet(sample, t, context)


def _decode_fn(pipe: PaintPipeline, to_unit, state, latents):
  _, vae, _ = pipe._modules(state)
  x = vae.decode(latents / pipe.vae_config.scaling_factor)
  return jnp.clip(x / 2 + 0.5, 0.0, 1.0) if to_unit else x


def _paint_fn(pipe: PaintPipeline, opts: PaintOptions, state, pixels, masked, mask_lat, keep,
              source01, latents, idx, key):
  unet, vae, enc = pipe._modules(state)
  k_lat, k_post, k_eta = jax.random.split(key, 3)
  b = pixels.shape[0]
  cond = enc(pixels)
  uncond = jnp.broadcast_to(enc.uncond_embeddings(b), cond.shape)  # T tokens (see encoder)
  m_lat = _latents_from_posterior(pipe, vae, masked, idx, opts.posterior, k_post)
  x = latents if opts.given_latents else _per_example_normal(k_lat, idx, latents.shape[1:])
  sched = pipe.scheduler(opts.sampler, opts.num_steps, eta=opts.eta,
                         clip_sample=opts.clip_sample)
  ts = sched.timesteps_jnp
  guided = opts.guidance_scale > 1.0
  if guided:
    extra = jnp.concatenate([jnp.concatenate([m_lat, mask_lat], -1)] * 2, 0)
    context = jnp.concatenate([uncond, cond], 0)
  else:
    extra, context = jnp.concatenate([m_lat, mask_lat], -1), cond

  def body(carry, i):
    x, st = carry
    inp = jnp.concatenate([x, x], 0) if guided else x
    eps = unet(jnp.concatenate([inp, extra], -1), jnp.full((inp.shape[0],), ts[i]), context)
    if guided:
      eps_u, eps_c = eps[:b], eps[b:]
      eps = eps_u + opts.guidance_scale * (eps_c - eps_u)
    noise = None
    if opts.sampler == "ddim" and opts.eta > 0:
      noise = _per_example_normal(jax.random.fold_in(k_eta, i), idx, x.shape[1:])
    x, st = sched.step(st, i, eps, x, noise=noise)
    if opts.report_progress:
      jax.debug.callback(pipe._report_progress, i + 1, sched.num_calls)
    return (x, st), None

  (x, _), _ = jax.lax.scan(body, (x, sched.init_state(x)), jnp.arange(sched.num_calls))
  image = jnp.clip(vae.decode(x / pipe.vae_config.scaling_factor) / 2 + 0.5, 0.0, 1.0)
  if opts.paste_back:
    image = keep * source01 + (1 - keep) * image
  return image, x
