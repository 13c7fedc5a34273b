"""Inception-v3 pool3 features of the TF-FID network (2015-12-05), in Flax NNX.

This is the network pytorch-fid uses for FID (``fid_inception_v3``): torchvision's Inception-v3
layout with the TF-FID weights and three forward-pass patches, reproduced here:

* ``FIDInceptionA`` / ``FIDInceptionC`` / ``FIDInceptionE_1`` (Mixed_5b-d, Mixed_6b-e, Mixed_7b):
  the pool branch is a 3x3/1 average pool that does *not* count the zero padding
  (``count_include_pad=False``, as TF's average pool);
* ``FIDInceptionE_2`` (Mixed_7c): the pool branch is a 3x3/1 *max* pool (a quirk of the TF
  graph that FID numbers depend on).

Every convolution is ``conv (no bias) -> BatchNorm(eps=1e-3, inference statistics) -> ReLU``.
Input: NHWC float images in [-1, 1] (the project's convention), any size. They are resized to
299x299 with bilinear interpolation without antialiasing (``F.interpolate(...,
mode="bilinear", align_corners=False)`` as pytorch-fid; bilinear resizing commutes with
pytorch-fid's later ``2x - 1`` map from [0, 1]). Output: the 2048-d global average pool of
Mixed_7c ("pool3").

Weights file (npz), as written by ``python -m scdm_jax.evaluation.convert_inception``: the keys
are pytorch-fid's state-dict keys without the classifier (``fc.*``) and without
``*.num_batches_tracked``, arrays in PyTorch layout::

  <block>.conv.weight         (out, in, kh, kw)   e.g. Conv2d_1a_3x3.conv.weight (32, 3, 3, 3)
  <block>.bn.weight           (out,)              BatchNorm gamma
  <block>.bn.bias             (out,)              BatchNorm beta
  <block>.bn.running_mean     (out,)
  <block>.bn.running_var      (out,)

with ``<block>`` one of ``Conv2d_1a_3x3``, ``Conv2d_2a_3x3``, ``Conv2d_2b_3x3``,
``Conv2d_3b_1x1``, ``Conv2d_4a_3x3`` or ``Mixed_{5b,5c,5d,6a,6b,6c,6d,6e,7a,7b,7c}.<branch>``
(`inception_weight_shapes()` lists all 470 keys). Any missing, unexpected, misshapen or
non-finite entry is refused with a message naming the file and the key.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scdm_jax.io import atomic
from scdm_jax.evaluation import _npz

__all__ = [
    "InceptionV3", "BasicConv", "inception_weight_shapes", "load_inception",
    "save_inception_npz", "make_feature_fn", "extract_features", "FEATURE_DIM", "INPUT_SIZE",
]

FEATURE_DIM = 2048
INPUT_SIZE = 299
_BN_EPS = 1e-3
# Full float32 convolutions: TF32/bf16 passes on GPUs/TPUs would move FID in its reported digits.
_PRECISION = jax.lax.Precision.HIGHEST
_HINT = ("Convert pytorch-fid's pt_inception-2015-12-05-6726825d.pth with "
         "`python -m scdm_jax.evaluation.convert_inception --torch FILE.pth --out FILE.npz`.")


def _pair(v):
  return (v, v) if isinstance(v, int) else tuple(v)


def _max_pool(x, k, s, pad):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, s, s, 1),
                               ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def _avg_pool_exclude_pad(x):
  """3x3/1 average pool, padding 1, dividing by the number of real pixels in the window."""
  pads = ((0, 0), (1, 1), (1, 1), (0, 0))
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
  return total / count


class BasicConv(nnx.Module):
  """Conv (no bias) + inference BatchNorm (eps 1e-3) + ReLU, as torchvision's BasicConv2d."""

  def __init__(self, in_features: int, out_features: int, kernel_size, stride=1, padding=0, *,
               rngs: nnx.Rngs):
    kh, kw = _pair(kernel_size)
    self.stride = _pair(stride)
    ph, pw = _pair(padding)
    self.padding = ((ph, ph), (pw, pw))
    fan_in = kh * kw * in_features
    self.kernel = nnx.Param(jax.random.normal(rngs.params(), (kh, kw, in_features, out_features),
                                              jnp.float32) * np.sqrt(2.0 / fan_in))
    self.scale = nnx.Param(jnp.ones((out_features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((out_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((out_features,), jnp.float32))

  def __call__(self, x):
    y = jax.lax.conv_general_dilated(x, self.kernel[...], self.stride, self.padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=_PRECISION)
    mult = self.scale[...] * jax.lax.rsqrt(self.var[...] + _BN_EPS)
    return jax.nn.relu(y * mult + (self.bias[...] - self.mean[...] * mult))


class InceptionA(nnx.Module):
  """Mixed_5b-d (FIDInceptionA: average pool without padded zeros)."""

  def __init__(self, cin: int, pool_features: int, *, rngs: nnx.Rngs):
    self.branch1x1 = BasicConv(cin, 64, 1, rngs=rngs)
    self.branch5x5_1 = BasicConv(cin, 48, 1, rngs=rngs)
    self.branch5x5_2 = BasicConv(48, 64, 5, padding=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv(cin, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv(96, 96, 3, padding=1, rngs=rngs)
    self.branch_pool = BasicConv(cin, pool_features, 1, rngs=rngs)

  def __call__(self, x):
    b1 = self.branch1x1(x)
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(_avg_pool_exclude_pad(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
  """Mixed_6a (grid reduction 35 -> 17)."""

  def __init__(self, cin: int, *, rngs: nnx.Rngs):
    self.branch3x3 = BasicConv(cin, 384, 3, stride=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv(cin, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv(96, 96, 3, stride=2, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3(x)
    bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate([b3, bd, _max_pool(x, 3, 2, 0)], axis=-1)


class InceptionC(nnx.Module):
  """Mixed_6b-e (FIDInceptionC: average pool without padded zeros)."""

  def __init__(self, cin: int, channels_7x7: int, *, rngs: nnx.Rngs):
    c7 = channels_7x7
    self.branch1x1 = BasicConv(cin, 192, 1, rngs=rngs)
    self.branch7x7_1 = BasicConv(cin, c7, 1, rngs=rngs)
    self.branch7x7_2 = BasicConv(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7_3 = BasicConv(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_1 = BasicConv(cin, c7, 1, rngs=rngs)
    self.branch7x7dbl_2 = BasicConv(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_3 = BasicConv(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7dbl_4 = BasicConv(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_5 = BasicConv(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch_pool = BasicConv(cin, 192, 1, rngs=rngs)

  def __call__(self, x):
    b1 = self.branch1x1(x)
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = x
    for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                  self.branch7x7dbl_4, self.branch7x7dbl_5):
      bd = layer(bd)
    bp = self.branch_pool(_avg_pool_exclude_pad(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
  """Mixed_7a (grid reduction 17 -> 8)."""

  def __init__(self, cin: int, *, rngs: nnx.Rngs):
    self.branch3x3_1 = BasicConv(cin, 192, 1, rngs=rngs)
    self.branch3x3_2 = BasicConv(192, 320, 3, stride=2, rngs=rngs)
    self.branch7x7x3_1 = BasicConv(cin, 192, 1, rngs=rngs)
    self.branch7x7x3_2 = BasicConv(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7x3_3 = BasicConv(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7x3_4 = BasicConv(192, 192, 3, stride=2, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
    return jnp.concatenate([b3, b7, _max_pool(x, 3, 2, 0)], axis=-1)


class InceptionE(nnx.Module):
  """Mixed_7b (FIDInceptionE_1, average pool) and Mixed_7c (FIDInceptionE_2, max pool)."""

  def __init__(self, cin: int, pool: str, *, rngs: nnx.Rngs):
    if pool not in ("avg", "max"):
      raise ValueError(f"pool must be 'avg' or 'max'; got {pool!r}.")
    self.pool = pool
    self.branch1x1 = BasicConv(cin, 320, 1, rngs=rngs)
    self.branch3x3_1 = BasicConv(cin, 384, 1, rngs=rngs)
    self.branch3x3_2a = BasicConv(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3_2b = BasicConv(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch3x3dbl_1 = BasicConv(cin, 448, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv(448, 384, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3a = BasicConv(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3dbl_3b = BasicConv(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch_pool = BasicConv(cin, 192, 1, rngs=rngs)

  def __call__(self, x):
    b1 = self.branch1x1(x)
    b3 = self.branch3x3_1(x)
    b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=-1)
    pooled = _avg_pool_exclude_pad(x) if self.pool == "avg" else _max_pool(x, 3, 1, 1)
    bp = self.branch_pool(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nnx.Module):
  """TF-FID Inception-v3 up to the 2048-d pool3 features (no classifier)."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.Conv2d_1a_3x3 = BasicConv(3, 32, 3, stride=2, rngs=rngs)
    self.Conv2d_2a_3x3 = BasicConv(32, 32, 3, rngs=rngs)
    self.Conv2d_2b_3x3 = BasicConv(32, 64, 3, padding=1, rngs=rngs)
    self.Conv2d_3b_1x1 = BasicConv(64, 80, 1, rngs=rngs)
    self.Conv2d_4a_3x3 = BasicConv(80, 192, 3, rngs=rngs)
    self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
    self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
    self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
    self.Mixed_6a = InceptionB(288, rngs=rngs)
    self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
    self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
    self.Mixed_7a = InceptionD(768, rngs=rngs)
    self.Mixed_7b = InceptionE(1280, "avg", rngs=rngs)
    self.Mixed_7c = InceptionE(2048, "max", rngs=rngs)

  def __call__(self, images: jax.Array, *, resize: bool = True) -> jax.Array:
    """Pool3 features.

    Args:
      images: (B, H, W, 3) float in [-1, 1].
      resize: resize to 299x299 (bilinear, no antialias) first, as pytorch-fid does.

    Returns:
      (B, 2048) float32.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be (B, H, W, 3); got shape {images.shape}.")
    x = images.astype(jnp.float32)
    if resize and x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
      x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), "bilinear",
                           antialias=False)
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = _max_pool(x, 3, 2, 0)
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
    x = _max_pool(x, 3, 2, 0)
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                  self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                  self.Mixed_7c):
      x = block(x)
    return jnp.mean(x, axis=(1, 2))


# Torch state-dict suffix -> (our variable name, converts torch array to ours).
_TORCH_SUFFIXES = {
    "conv.weight": ("kernel", lambda a: np.transpose(a, (2, 3, 1, 0))),
    "bn.weight": ("scale", lambda a: a),
    "bn.bias": ("bias", lambda a: a),
    "bn.running_mean": ("mean", lambda a: a),
    "bn.running_var": ("var", lambda a: a),
}


def _abstract_model() -> InceptionV3:
  return nnx.eval_shape(lambda: InceptionV3(rngs=nnx.Rngs(0)))


def _basic_convs(model: InceptionV3):
  """(dotted torch-style path, BasicConv) for every conv layer, in graph order."""
  for path, node in nnx.iter_graph(model):
    if isinstance(node, BasicConv):
      yield ".".join(str(p) for p in path), node


def inception_weight_shapes() -> dict[str, tuple[int, ...]]:
  """Every key of the weights npz with its (PyTorch-layout) shape."""
  return dict(_weight_shapes())


@functools.cache
def _weight_shapes() -> dict[str, tuple[int, ...]]:
  shapes = {}
  for name, conv in _basic_convs(_abstract_model()):
    kh, kw, cin, cout = conv.kernel.get_value().shape
    shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
    for suffix in ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
      shapes[f"{name}.{suffix}"] = (cout,)
  return shapes


def load_inception(path: str | os.PathLike) -> InceptionV3:
  """Builds the network from a weights npz (see the module docstring); refuses bad files."""
  arrays = _npz.load_npz(path, "Inception weights")
  _npz.check_arrays(arrays, inception_weight_shapes(), path, "Inception weights", _HINT)
  model = _abstract_model()
  graphdef, state = nnx.split(model)
  pure = nnx.to_pure_dict(state)
  for name, _ in _basic_convs(model):
    node = pure
    for part in name.split("."):
      node = node[part]
    for suffix, (ours, convert) in _TORCH_SUFFIXES.items():
      node[ours] = jnp.asarray(convert(arrays[f"{name}.{suffix}"]).astype(np.float32))
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def save_inception_npz(model: InceptionV3, path: str | os.PathLike) -> None:
  """Writes a model's variables in the weights-npz layout (tests, re-exports)."""
  arrays = {}
  for name, conv in _basic_convs(model):
    arrays[f"{name}.conv.weight"] = np.transpose(np.asarray(conv.kernel.get_value()), (3, 2, 0, 1))
    arrays[f"{name}.bn.weight"] = np.asarray(conv.scale.get_value())
    arrays[f"{name}.bn.bias"] = np.asarray(conv.bias.get_value())
    arrays[f"{name}.bn.running_mean"] = np.asarray(conv.mean.get_value())
    arrays[f"{name}.bn.running_var"] = np.asarray(conv.var.get_value())
  atomic.write_npz(path, arrays)


def make_feature_fn(model: InceptionV3, *, resize: bool = True
                    ) -> Callable[[jax.Array], jax.Array]:
  """A jitted ``images (B, H, W, 3) in [-1, 1] -> (B, 2048)``.

  The weights are passed to one compiled program per input shape (not baked in as
  constants, which would bloat compilation); a batch sharded over devices (NamedSharding on
  the batch axis) is processed data-parallel with the weights replicated.
  """
  graphdef, state = nnx.split(model)

  @jax.jit
  def fn(state, images):
    return nnx.merge(graphdef, state)(images, resize=resize)

  return lambda images: fn(state, images)


def extract_features(model_or_fn: Any, images: Any, *, batch_size: int = 50,
                     sharding: jax.sharding.Sharding | None = None) -> np.ndarray:
  """Pool3 features (float64 numpy) of an (N, H, W, 3) array of [-1, 1] images.

  The last batch is zero-padded to ``batch_size`` (one compiled shape) and the padding rows
  dropped, so no image is lost (the OASIS FID script drops the remainder; see
  docs/evaluation.md). With ``sharding`` (e.g. ``NamedSharding(mesh, P("data"))``; then
  ``batch_size`` must divide evenly over it) each batch is split over the devices.
  """
  fn = make_feature_fn(model_or_fn) if isinstance(model_or_fn, InceptionV3) else model_or_fn
  images = np.asarray(images)
  n = images.shape[0]
  out = []
  for start in range(0, n, batch_size):
    batch = images[start:start + batch_size]
    real = batch.shape[0]
    if real < batch_size and n > batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - real,) + batch.shape[1:],
                                              batch.dtype)])
    batch = batch.astype(np.float32)
    batch = jax.device_put(batch, sharding) if sharding is not None else jnp.asarray(batch)
    out.append(np.asarray(fn(batch), np.float64)[:real])
  return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float64)
