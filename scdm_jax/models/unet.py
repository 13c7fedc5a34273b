"""The SDM/SCDM UNet (guided-diffusion UNetModel with SPADE decoder) in Flax NNX, NHWC.

The encoder is an unconditional ADM encoder; the middle block and the decoder use
SDMResBlocks whose GroupNorms are SPADE norms driven by the conditioning map (label
one-hot channels, plus the instance-edge channel when used). See docs/model.md.

Usage:
  cfg = UNetConfig(image_size=256, model_channels=256, ...)
  model = UNet(cfg, rngs=nnx.Rngs(0))
  out = model(x_t, t, cond)  # (B, H, W, out_channels) float32
"""

from __future__ import annotations

import ast
import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scdm_jax.models import layers

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Constructor arguments of the reference `UNetModel` plus JAX-side options.

  Attributes:
    image_size: training resolution (informational; any input divisible by
      2**(len(channel_mult)-1) works).
    in_channels: image channels (3).
    model_channels: base width (256 in the published config).
    out_channels: 6 with learned sigma (eps and the variance interpolation v), else 3.
    num_res_blocks: ResBlocks per level in the encoder (the decoder has one more).
    attention_resolutions: downsample factors with attention, as in the reference
      constructor (the published "32,16,8" at 256 px is (8, 16, 32)).
    channel_mult: width multiplier per level.
    num_classes: conditioning channels L = label classes (+1 with the instance-edge map).
    num_head_channels: channels per attention head (-1: use num_heads).
    num_heads: head count when num_head_channels == -1.
    num_heads_upsample: head count in the decoder when num_head_channels == -1
      (-1: same as num_heads).
    use_scale_shift_norm: FiLM-style (1 + scale, shift) from the timestep embedding.
    resblock_updown: resample inside ResBlocks; otherwise separate (conv) resamplers.
    conv_resample: with resblock_updown=False, learned 3x3 convs for resampling.
    use_new_attention_order: split q/k/v before heads (False: legacy per-head layout).
    dropout: dropout rate in ResBlocks (needs `rngs` with a "dropout" stream at call).
    dtype: compute dtype, "float32" or "bfloat16". Params are always float32; GroupNorm
      and attention softmax are float32; the output head and output are float32.
    remat: rematerialise each ResBlock/attention block (nnx.remat) to save memory.
    onehot_lookup: compute the first SPADE conv as a per-pixel embedding lookup. Exact
      only when the label channels are one-hot or all-zero per pixel (callers guarantee
      it; it cannot be checked under jit).
    edge_channel: the last of the `num_classes` channels is the instance-edge map (not
      one-hot): the lookup covers the other channels, the edge gets a dense 1-ch conv.
    attention_implementation: passed to jax.nn.dot_product_attention (None = XLA,
      "cudnn" = fused cuDNN kernel on GPU, bf16 only).
  """

  image_size: int = 256
  in_channels: int = 3
  model_channels: int = 256
  out_channels: int = 6
  num_res_blocks: int = 2
  attention_resolutions: tuple[int, ...] = (8, 16, 32)
  channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
  num_classes: int = 151
  num_head_channels: int = 64
  num_heads: int = 1
  num_heads_upsample: int = -1
  use_scale_shift_norm: bool = True
  resblock_updown: bool = True
  conv_resample: bool = True
  use_new_attention_order: bool = False
  dropout: float = 0.0
  dtype: str = "float32"
  remat: bool = False
  onehot_lookup: bool = True
  edge_channel: bool = False
  attention_implementation: str | None = None

  def __post_init__(self):
    # ml_collections hands lists; keep the dataclass hashable.
    object.__setattr__(self, "attention_resolutions",
                       tuple(int(a) for a in self.attention_resolutions))
    object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
    if self.dtype not in _DTYPES:
      raise ValueError(f"UNetConfig.dtype={self.dtype!r}: use one of {sorted(_DTYPES)}")
    if self.num_classes < 1:
      raise ValueError(f"UNetConfig.num_classes={self.num_classes}: need >= 1 label channel")
    if self.edge_channel and self.num_classes < 2:
      raise ValueError("UNetConfig.edge_channel=True needs num_classes >= 2 "
                       "(label classes + the edge channel)")
    if self.num_head_channels == -1 and self.num_heads < 1:
      raise ValueError("UNetConfig: set num_head_channels > 0 or num_heads >= 1")
    if self.attention_implementation not in (None, "xla", "cudnn"):
      raise ValueError(f"UNetConfig.attention_implementation="
                       f"{self.attention_implementation!r}: use None, 'xla' or 'cudnn'")

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def num_onehot(self) -> int:
    """Number of one-hot label channels (num_classes without the edge channel)."""
    return self.num_classes - (1 if self.edge_channel else 0)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["attention_resolutions"] = list(self.attention_resolutions)
    d["channel_mult"] = list(self.channel_mult)
    return d

  @classmethod
  def from_reference_kwargs(cls, kwargs: dict[str, Any] | str, **overrides) -> "UNetConfig":
    """Builds a config from the reference `UNetModel(**kwargs)` arguments.

    Args:
      kwargs: the dict, or its Python literal string (the unet fixture's `config`).
        `num_classes` is the label-channel count; `attention_resolutions` are
        downsample factors. `use_fp16`/`use_checkpoint` are ignored (use `dtype`/`remat`).
      **overrides: UNetConfig fields to set on top (dtype, onehot_lookup, ...).
    """
    if isinstance(kwargs, str):
      try:
        kwargs = ast.literal_eval(kwargs)
      except (ValueError, SyntaxError) as e:
        raise ValueError(f"reference config is not a Python dict literal: {kwargs!r}") from e
    kwargs = dict(kwargs)
    if kwargs.pop("dims", 2) != 2:
      raise ValueError("reference config: only dims=2 is supported")
    for k in ("use_fp16", "use_checkpoint"):
      kwargs.pop(k, None)
    if kwargs.get("num_classes") is None:
      raise ValueError("reference config: num_classes (label channels) is required; the "
                       "unconditional UNet is not an SDM/SCDM network")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
      raise ValueError(f"reference config: unsupported constructor arguments {unknown}")
    kwargs.update(overrides)
    return cls(**kwargs)


def _heads(cfg: UNetConfig, channels: int, upsample: bool) -> int:
  if cfg.num_head_channels != -1:
    if channels % cfg.num_head_channels:
      raise ValueError(f"UNetConfig: {channels} channels are not divisible by "
                       f"num_head_channels={cfg.num_head_channels}")
    return channels // cfg.num_head_channels
  if upsample and cfg.num_heads_upsample != -1:
    return cfg.num_heads_upsample
  return cfg.num_heads


def _apply_layer(layer, h, emb, seg, seg_out, key):
  """Runs one block of a level (module-level so that nnx.remat can wrap it)."""
  if isinstance(layer, (layers.SDMResBlock, layers.ResBlock)):
    return layer(h, emb, seg, seg_out, key)
  return layer(h)


_apply_layer_remat = nnx.remat(_apply_layer)


class UNet(nnx.Module):
  """SDM/SCDM UNet. Module tree mirrors the PyTorch names (see `torch_params`)."""


  def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
    cfg = self.config = config
    dt = cfg.compute_dtype
    mc = cfg.model_channels
    emb_ch = 4 * mc
    lc, k = cfg.num_classes, cfg.num_onehot
    keys = layers.KeyGen(rngs.params())
    # Time MLP and the output head run in float32, as in the reference (its fp16
    # conversion only touches input/middle/output blocks).
    self.time_embed_0 = layers.linear(mc, emb_ch, dtype=jnp.float32, keys=keys)
    self.time_embed_2 = layers.linear(emb_ch, emb_ch, dtype=jnp.float32, keys=keys)

    def res(ch, out, **kw):
      return layers.ResBlock(ch, emb_ch, out, dropout=cfg.dropout,
                             use_scale_shift_norm=cfg.use_scale_shift_norm, dtype=dt,
                             keys=keys, **kw)

    def sdm(ch, out, **kw):
      return layers.SDMResBlock(ch, emb_ch, out, label_channels=lc, num_onehot=k,
                                dropout=cfg.dropout,
                                use_scale_shift_norm=cfg.use_scale_shift_norm, dtype=dt,
                                keys=keys, **kw)

    def attn(ch, upsample):
      return layers.AttentionBlock(ch, _heads(cfg, ch, upsample),
                                   legacy=not cfg.use_new_attention_order,
                                   implementation=cfg.attention_implementation, dtype=dt,
                                   keys=keys)

    ch = input_ch = int(cfg.channel_mult[0] * mc)
    input_blocks = [[layers.conv(cfg.in_channels, ch, 3, dtype=dt, keys=keys)]]
    chans = [ch]
    ds = 1
    in_ds = [1]  # downsample factor of each input block's output
    for level, mult in enumerate(cfg.channel_mult):
      for _ in range(cfg.num_res_blocks):
        blk = [res(ch, int(mult * mc))]
        ch = int(mult * mc)
        if ds in cfg.attention_resolutions:
          blk.append(attn(ch, False))
        input_blocks.append(blk)
        chans.append(ch)
        in_ds.append(ds)
      if level != len(cfg.channel_mult) - 1:
        input_blocks.append([res(ch, ch, down=True) if cfg.resblock_updown
                             else layers.Downsample(ch, cfg.conv_resample, dtype=dt,
                                                    keys=keys)])
        chans.append(ch)
        ds *= 2
        in_ds.append(ds)
    self.input_blocks = nnx.List([nnx.List(b) for b in input_blocks])
    self.middle_block = nnx.List([sdm(ch, ch), attn(ch, False), sdm(ch, ch)])
    middle_ds = ds
    output_blocks, out_ds = [], []
    for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
      for i in range(cfg.num_res_blocks + 1):
        ich = chans.pop()
        blk = [sdm(ch + ich, int(mc * mult))]
        ch = int(mc * mult)
        if ds in cfg.attention_resolutions:
          blk.append(attn(ch, True))
        block_ds = ds
        if level and i == cfg.num_res_blocks:
          blk.append(sdm(ch, ch, up=True) if cfg.resblock_updown
                     else layers.Upsample(ch, cfg.conv_resample, dtype=dt, keys=keys))
          ds //= 2
        output_blocks.append(blk)
        out_ds.append(block_ds)
    self.output_blocks = nnx.List([nnx.List(b) for b in output_blocks])
    self.out_norm = layers.GroupNorm(ch)
    self.out_conv = layers.conv(input_ch, cfg.out_channels, 3, zero=True, dtype=jnp.float32,
                                keys=keys)
    # Static bookkeeping: the downsample factor each block runs at.
    self._middle_ds = middle_ds
    self._out_ds = tuple(out_ds)
    self._num_skips = len(input_blocks)

  @property
  def num_skips(self) -> int:
    """Skip tensors stored by the encoder (18 for the published config)."""
    return self._num_skips

  def _label_inputs(self, cond: jax.Array, lookup: bool,
                    unconditional: int = 0) -> dict[int, layers.LabelInput]:
    """The conditioning map at each downsample factor used by a SPADE norm.

    `unconditional`: that many all-zero rows follow the rows of `cond` (see LabelInput)."""
    cfg = self.config
    # Up blocks apply their out_norm after upsampling, at half the factor.
    factors = sorted({self._middle_ds, *self._out_ds, *(s // 2 for s in self._out_ds)} - {0})
    if lookup:
      k = cfg.num_onehot
      index = layers.onehot_index(cond[..., :k])
      edge = cond[..., k:].astype(cfg.compute_dtype) if cfg.edge_channel else None
      return {s: layers.LabelInput(index=index[:, ::s, ::s],
                                   edge=None if edge is None else edge[:, ::s, ::s],
                                   unconditional=unconditional)
              for s in factors}
    dense = cond.astype(cfg.compute_dtype)
    # PyTorch's nearest resize by an integer factor takes the top-left pixel of a block.
    return {s: layers.LabelInput(dense=dense[:, ::s, ::s], unconditional=unconditional)
            for s in factors}

  def _check_inputs(self, x, cond):
    cfg = self.config
    if cond.shape[-1] != cfg.num_classes:
      raise ValueError(f"UNet: cond has {cond.shape[-1]} channels, the config says "
                       f"num_classes={cfg.num_classes}")
    if x.shape[-1] != cfg.in_channels:
      raise ValueError(f"UNet: x has {x.shape[-1]} channels, expected {cfg.in_channels}")
    step = 2 ** (len(cfg.channel_mult) - 1)
    if x.shape[1] % step or x.shape[2] % step or cond.shape[1:3] != x.shape[1:3] \
        or cond.shape[0] != x.shape[0]:
      raise ValueError(f"UNet: x {x.shape} / cond {cond.shape}: batch and spatial size must "
                       f"match, and the size be divisible by {step}")

  def __call__(self, x: jax.Array, t: jax.Array, cond: jax.Array, *,
               deterministic: bool = True, rngs: nnx.Rngs | None = None,
               onehot_lookup: bool | None = None) -> jax.Array:
    """Predicts (eps, v) from a noisy image.

    Args:
      x: (B, H, W, in_channels) noisy image.
      t: (B,) integer original timesteps.
      cond: (B, H, W, num_classes) conditioning: one-hot-or-all-zero label channels,
        then the instance-edge channel when `edge_channel`.
      deterministic: no dropout when True.
      rngs: needs a "dropout" stream when dropout > 0 and not deterministic.
      onehot_lookup: False forces the dense first SPADE conv for this call (the train
        step does so at few classes, where it is the faster one to differentiate);
        None = `config.onehot_lookup`. The result is the same up to float rounding.

    Returns:
      (B, H, W, out_channels) float32.
    """
    self._check_inputs(x, cond)
    base_key = None
    if self.config.dropout > 0 and not deterministic:
      if rngs is None:
        raise ValueError("UNet: dropout > 0 with deterministic=False needs rngs=nnx.Rngs("
                         "dropout=...)")
      base_key = rngs.dropout()
    return self._forward(x, t, cond, onehot_lookup, base_key, twin=False)

  def with_unconditional(self, x: jax.Array, t: jax.Array, cond: jax.Array
                         ) -> tuple[jax.Array, jax.Array]:
    """`(self(x, t, cond), self(x, t, zeros_like(cond)))`, for classifier-free guidance.

    Cheaper than one call on the doubled batch, with the same result up to float
    rounding: the encoder and the time embedding do not see the map, so they run once on
    the B rows; the decoder runs on 2B rows, and the SPADE modulation of the all-zero map
    (which depends on nothing) is computed once for all B unconditional rows. No dropout.
    """
    self._check_inputs(x, cond)
    out = self._forward(x, t, cond, None, None, twin=True)
    b = x.shape[0]
    return out[:b], out[b:]

  def _forward(self, x, t, cond, onehot_lookup, base_key, twin: bool):
    """The network; `twin`: after the encoder, the batch is doubled with all-zero maps."""
    cfg = self.config
    lookup = cfg.onehot_lookup if onehot_lookup is None else cfg.onehot_lookup and onehot_lookup
    counter = [0]

    def key():
      counter[0] += 1
      return None if base_key is None else jax.random.fold_in(base_key, counter[0])

    apply = _apply_layer_remat if cfg.remat else _apply_layer
    dt = cfg.compute_dtype
    emb = layers.timestep_embedding(t, cfg.model_channels)
    emb = self.time_embed_2(jax.nn.silu(self.time_embed_0(emb)))
    segs = self._label_inputs(cond, lookup, unconditional=x.shape[0] if twin else 0)

    h = x.astype(dt)
    hs = []
    for blk in self.input_blocks:
      for layer in blk:
        if isinstance(layer, layers.Conv2d):
          h = layer(h)
        else:
          h = apply(layer, h, emb, None, None, key())
      hs.append(h)
    if twin:
      double = lambda a: jnp.concatenate([a, a], axis=0)
      h, emb, hs = double(h), double(emb), [double(a) for a in hs]
    for layer in self.middle_block:
      seg = segs[self._middle_ds]
      h = apply(layer, h, emb, seg, seg, key())
    for blk, s in zip(self.output_blocks, self._out_ds):
      h = jnp.concatenate([h, hs.pop()], axis=-1)
      for layer in blk:
        up = isinstance(layer, layers.SDMResBlock) and layer.up
        h = apply(layer, h, emb, segs[s], segs[s // 2 if up else s], key())
    h = jax.nn.silu(self.out_norm(h.astype(jnp.float32)))
    return self.out_conv(h).astype(jnp.float32)

  def torch_params(self) -> layers.TorchParams:
    """(PyTorch state-dict name, parameter variable, layout) for every parameter."""
    out = (layers._linear_torch("time_embed.0", self.time_embed_0)
           + layers._linear_torch("time_embed.2", self.time_embed_2))
    for name, blocks in (("input_blocks", self.input_blocks),
                         ("output_blocks", self.output_blocks)):
      for i, blk in enumerate(blocks):
        for j, layer in enumerate(blk):
          prefix = f"{name}.{i}.{j}"
          if isinstance(layer, layers.Conv2d):
            out += layers._conv_torch(prefix, layer)
          else:
            out += layer.torch_params(prefix)
    for j, layer in enumerate(self.middle_block):
      out += layer.torch_params(f"middle_block.{j}")
    out += self.out_norm.torch_params("out.0") + layers._conv_torch("out.2", self.out_conv)
    return out


def abstract_unet(config: UNetConfig) -> UNet:
  """The UNet with ShapeDtypeStruct parameters (no allocation)."""
  return nnx.eval_shape(lambda: UNet(config, rngs=nnx.Rngs(0)))


def count_params(config: UNetConfig) -> int:
  """Number of parameters, counted on an abstract model (nothing is allocated)."""
  state = nnx.state(abstract_unet(config), nnx.Param)
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(state)))


def init_params_host(config: UNetConfig, seed: int = 0) -> dict:
  """Parameters drawn on the host with NumPy, with the constructor's distributions.

  Same init scheme as `UNet(config, rngs=...)` (PyTorch defaults: U(+-1/sqrt(fan_in)) for
  conv/linear weights and biases, zeros for the zero-init output convs, ones/zeros for
  GroupNorm) but different random numbers. Useful on CPU, where compiling the random
  init of a few hundred parameters takes long; load with
  `torch_import.unet_from_params(config, params)`.
  """
  rng = np.random.default_rng(seed)
  model = abstract_unet(config)
  values = {}
  for _, node in nnx.iter_graph(model):
    if isinstance(node, (layers.Conv2d, layers.Dense)):
      kshape, bshape = node.kernel.shape, node.bias.shape
      if node.zero_init:
        values[id(node.kernel)] = np.zeros(kshape, np.float32)
        values[id(node.bias)] = np.zeros(bshape, np.float32)
      else:
        bound = 1.0 / math.sqrt(math.prod(kshape[:-1]))
        values[id(node.kernel)] = rng.uniform(-bound, bound, kshape).astype(np.float32)
        values[id(node.bias)] = rng.uniform(-bound, bound, bshape).astype(np.float32)
    elif isinstance(node, layers.GroupNorm):
      values[id(node.scale)] = np.ones(node.scale.shape, np.float32)
      values[id(node.bias)] = np.zeros(node.bias.shape, np.float32)
  params: dict = {}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Param):
      tree = params
      for p in path[:-1]:
        tree = tree.setdefault(p, {})
      tree[path[-1]] = values[id(node)]
  return params
