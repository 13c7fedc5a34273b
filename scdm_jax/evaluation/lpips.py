"""AlexNet-LPIPS (Zhang et al. 2018) and the LPIPS diversity score, in Flax NNX.

Network: torchvision AlexNet ``features`` (conv1..conv5, each followed by ReLU; 3x3/2 max
pools after relu1 and relu2), the five ReLU outputs are unit-normalised over channels, the
squared difference of two images' maps is weighted by the non-negative 1x1 "lin" heads, averaged
over space and summed over layers.

Two preprocessing/normalisation variants (``variant=``):

* ``"lpips"`` (default, the ``lpips`` package): input in [-1, 1], ``x = (x - shift) / scale``
  with ``shift = (-.030, -.088, -.188)``, ``scale = (.458, .448, .450)``; channel normalisation
  ``f / (||f|| + 1e-10)``.
* ``"stargan_v2"`` (the code SCDM's diversity numbers come from): the evaluation loader first
  resizes to 299x299 and applies ImageNet mean/std to the [0, 1] image, *then* LPIPS applies
  its own shift/scale (a double normalisation), and channels are normalised as
  ``f * rsqrt(||f||^2 + 1e-10)``. Use it to compare with the paper's LPIPS column. The resize
  here is bilinear with antialiasing, our closest stand-in for torchvision's PIL resize.

Weights file (npz), PyTorch layout::

  features.0.weight (64, 3, 11, 11)    features.0.bias (64,)     conv1 (stride 4, pad 2)
  features.3.weight (192, 64, 5, 5)    features.3.bias (192,)    conv2 (pad 2)
  features.6.weight (384, 192, 3, 3)   features.6.bias (384,)    conv3 (pad 1)
  features.8.weight (256, 384, 3, 3)   features.8.bias (256,)    conv4 (pad 1)
  features.10.weight (256, 256, 3, 3)  features.10.bias (256,)   conv5 (pad 1)
  lin0.model.1.weight (1, 64, 1, 1) ... lin4.model.1.weight (1, 256, 1, 1)

i.e. torchvision's ``alexnet`` state dict (``features.*``) plus the LPIPS v0.1 ``alex.pth``
heads; ``python -m scdm_jax.evaluation.convert_lpips`` writes it from those two files.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scdm_jax.io import atomic
from scdm_jax.evaluation import _npz

__all__ = ["LPIPS", "lpips_weight_shapes", "load_lpips", "save_lpips_npz", "diversity",
           "VARIANTS"]

VARIANTS = ("lpips", "stargan_v2")
_SHIFT = np.array([-.030, -.088, -.188], np.float32)
_SCALE = np.array([.458, .448, .450], np.float32)
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# (torch index in alexnet.features, cin, cout, kernel, stride, padding)
_CONVS = ((0, 3, 64, 11, 4, 2), (3, 64, 192, 5, 1, 2), (6, 192, 384, 3, 1, 1),
          (8, 384, 256, 3, 1, 1), (10, 256, 256, 3, 1, 1))
_PRECISION = jax.lax.Precision.HIGHEST
_HINT = ("Build it from torchvision's alexnet weights and LPIPS v0.1 alex.pth with "
         "`python -m scdm_jax.evaluation.convert_lpips --alexnet A.pth --lin alex.pth --out F.npz`.")


def _max_pool(x):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")


class LPIPS(nnx.Module):
  """AlexNet-LPIPS distance; ``__call__(x, y) -> (B,)`` for NHWC images in [-1, 1]."""

  def __init__(self, *, variant: str = "lpips", rngs: nnx.Rngs):
    if variant not in VARIANTS:
      raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}.")
    self.variant = variant
    self.kernels = nnx.List()
    self.biases = nnx.List()
    self.lins = nnx.List()
    for _, cin, cout, k, _, _ in _CONVS:
      fan_in = cin * k * k
      self.kernels.append(nnx.Param(
          jax.random.normal(rngs.params(), (k, k, cin, cout), jnp.float32) * np.sqrt(2 / fan_in)))
      self.biases.append(nnx.Param(jnp.zeros((cout,), jnp.float32)))
      self.lins.append(nnx.Param(jax.random.uniform(rngs.params(), (cout,), jnp.float32) / cout))

  def features(self, x: jax.Array) -> list[jax.Array]:
    """The five normalised ReLU maps of images in [-1, 1]."""
    if self.variant != "stargan_v2" and min(x.shape[1:3]) < 31:
      # conv1 (11/4) and two 3x3/2 pools leave no pixel for conv3..5 below 31 px.
      raise ValueError(f"LPIPS (AlexNet) needs images of at least 31x31; got {x.shape[1:3]}.")
    x = x.astype(jnp.float32)
    if self.variant == "stargan_v2":
      x = jax.image.resize(x, (x.shape[0], 299, 299, x.shape[-1]), "bilinear", antialias=True)
      x = ((x + 1) / 2 - _IMAGENET_MEAN) / _IMAGENET_STD
    x = (x - _SHIFT) / _SCALE
    maps = []
    for i, (_, _, _, _, stride, pad) in enumerate(_CONVS):
      if i in (1, 2):
        x = _max_pool(x)
      x = jax.lax.conv_general_dilated(x, self.kernels[i][...], (stride, stride),
                                       ((pad, pad), (pad, pad)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       precision=_PRECISION)
      x = jax.nn.relu(x + self.biases[i][...])
      sq = jnp.sum(x * x, axis=-1, keepdims=True)
      if self.variant == "stargan_v2":
        maps.append(x * jax.lax.rsqrt(sq + 1e-10))
      else:
        maps.append(x / (jnp.sqrt(sq) + 1e-10))
    return maps

  def distance_from_features(self, fx: Sequence[jax.Array], fy: Sequence[jax.Array]):
    total = 0.0
    for i, (a, b) in enumerate(zip(fx, fy)):
      total = total + jnp.mean(jnp.sum((a - b) ** 2 * self.lins[i][...], axis=-1), axis=(1, 2))
    return total

  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"x and y must both be (B, H, W, 3); got {x.shape} and {y.shape}.")
    return self.distance_from_features(self.features(x), self.features(y))


def lpips_weight_shapes() -> dict[str, tuple[int, ...]]:
  """Every key of the LPIPS weights npz with its (PyTorch-layout) shape."""
  shapes = {}
  for i, (idx, cin, cout, k, _, _) in enumerate(_CONVS):
    shapes[f"features.{idx}.weight"] = (cout, cin, k, k)
    shapes[f"features.{idx}.bias"] = (cout,)
    shapes[f"lin{i}.model.1.weight"] = (1, cout, 1, 1)
  return shapes


def load_lpips(path: str | os.PathLike, *, variant: str = "lpips") -> LPIPS:
  """Builds AlexNet-LPIPS from a weights npz (see the module docstring); refuses bad files."""
  arrays = _npz.load_npz(path, "LPIPS weights")
  _npz.check_arrays(arrays, lpips_weight_shapes(), path, "LPIPS weights", _HINT)
  # Shapes only: the random initialisation would be thrown away.
  model = nnx.eval_shape(lambda: LPIPS(variant=variant, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  pure = {"kernels": {}, "biases": {}, "lins": {}}
  for i, (idx, *_rest) in enumerate(_CONVS):
    pure["kernels"][i] = jnp.asarray(
        np.transpose(arrays[f"features.{idx}.weight"], (2, 3, 1, 0)), jnp.float32)
    pure["biases"][i] = jnp.asarray(arrays[f"features.{idx}.bias"], jnp.float32)
    pure["lins"][i] = jnp.asarray(arrays[f"lin{i}.model.1.weight"].reshape(-1), jnp.float32)
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def save_lpips_npz(model: LPIPS, path: str | os.PathLike) -> None:
  """Writes a model's weights in the npz layout (tests, re-exports)."""
  arrays = {}
  for i, (idx, *_rest) in enumerate(_CONVS):
    arrays[f"features.{idx}.weight"] = np.transpose(np.asarray(model.kernels[i][...]),
                                                    (3, 2, 0, 1))
    arrays[f"features.{idx}.bias"] = np.asarray(model.biases[i][...])
    arrays[f"lin{i}.model.1.weight"] = np.asarray(model.lins[i][...]).reshape(1, -1, 1, 1)
  atomic.write_npz(path, arrays)


def diversity(model: LPIPS, samples: Any, *, batch_size: int = 16) -> dict[str, Any]:
  """Mean pairwise LPIPS between the sample sets of each label map (SCDM/StarGAN-v2 protocol).

  Args:
    model: an `LPIPS` network.
    samples: (S, N, H, W, 3) in [-1, 1]: S sample sets (the paper: 10 seeds) of N label maps.
    batch_size: label maps per compiled call.

  Returns:
    ``{"lpips_diversity": mean over maps of the mean over the S(S-1)/2 pairs,
    "per_map": (N,) numpy, "num_sets": S, "num_pairs": S(S-1)/2, "num_maps": N}``.
    Averaging per map and then over maps equals the StarGAN-v2 code's average over pairs of
    per-batch means when every map has the same number of sets, as here.
  """
  samples = np.asarray(samples)
  if samples.ndim != 5 or samples.shape[-1] != 3:
    raise ValueError(f"samples must be (num_sets, num_maps, H, W, 3); got {samples.shape}.")
  num_sets, num_maps = samples.shape[:2]
  if num_sets < 2:
    raise ValueError(f"diversity needs at least 2 sample sets per map; got {num_sets}.")
  pairs = list(itertools.combinations(range(num_sets), 2))
  graphdef, state = nnx.split(model)

  @jax.jit
  def per_map(state, chunk):  # chunk: (S, b, H, W, 3) -> (b,)
    net = nnx.merge(graphdef, state)
    s, b = chunk.shape[:2]
    feats = net.features(chunk.reshape((s * b,) + chunk.shape[2:]))
    feats = [f.reshape((s, b) + f.shape[1:]) for f in feats]

    # One pair at a time (lax.map) keeps memory at the S * b feature maps, not 45x that.
    def pair_distance(ij):
      return net.distance_from_features([f[ij[0]] for f in feats], [f[ij[1]] for f in feats])

    return jax.lax.map(pair_distance, jnp.asarray(pairs, jnp.int32)).mean(axis=0)

  out = []
  batch_size = min(batch_size, num_maps)
  for start in range(0, num_maps, batch_size):
    chunk = samples[:, start:start + batch_size]
    real = chunk.shape[1]
    if real < batch_size:  # Pad the last chunk: one compiled shape for the whole run.
      pad = np.zeros((num_sets, batch_size - real) + chunk.shape[2:], chunk.dtype)
      chunk = np.concatenate([chunk, pad], axis=1)
    values = per_map(state, jnp.asarray(chunk, jnp.float32))
    out.append(np.asarray(values, np.float64)[:real])
  values = np.concatenate(out)
  return {"lpips_diversity": float(values.mean()), "per_map": values, "num_sets": num_sets,
          "num_pairs": len(pairs), "num_maps": num_maps}
