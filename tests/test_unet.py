"""The NNX UNet: one-hot lookup, parameter counts, init, mixed precision, remat, shapes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scdm_jax.models import layers
from scdm_jax.models import torch_import
from scdm_jax.models.unet import UNet, UNetConfig, abstract_unet, count_params
from scdm_jax.models.unet import init_params_host

TINY = UNetConfig(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(2,), num_head_channels=16, num_classes=6)
# bfloat16 vs float32 forward: documented tolerance (docs/model.md), relative to max|out|.
BF16_REL_TOL = 5e-2


def _onehot(rng, shape, k, zero_frac=0.2):
  """Random one-hot map with all-zero pixels, including the whole border."""
  idx = rng.integers(0, k, shape)
  y = np.eye(k, dtype=np.float32)[idx]
  y[rng.random(shape) < zero_frac] = 0
  y[:, 0] = 0
  y[:, :, -1] = 0
  return y


def _random_params(cfg, seed=0, scale=0.2):
  """Host-side params with every layer non-zero (zero-init layers perturbed)."""
  rng = np.random.default_rng(seed)
  params = init_params_host(cfg, seed)
  return jax.tree.map(lambda p: (p + scale * rng.standard_normal(p.shape)).astype(np.float32),
                      params)


def _apply(model, *args):
  """Jitted forward (one compile is much cheaper than eager op-by-op on CPU)."""
  graphdef, state = nnx.split(model)
  return jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))(state, *args)


def _inputs(cfg, seed=0, b=2):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((b, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
  t = np.array([3, 917][:b], np.int32)
  return x, t, rng


def test_onehot_conv3x3_equals_dense_conv():
  rng = np.random.default_rng(0)
  k, c_out = 7, 16
  y = _onehot(rng, (2, 9, 10), k)
  kernel = rng.standard_normal((3, 3, k, c_out)).astype(np.float32)
  bias = rng.standard_normal((c_out,)).astype(np.float32)
  dense = jax.lax.conv_general_dilated(
      y, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
  index = layers.onehot_index(jnp.asarray(y))
  assert int(index[0, 0, 0]) == k  # all-zero pixel -> the zero row
  got = layers.onehot_conv3x3(index, jnp.asarray(kernel), jnp.asarray(bias), k,
                              dtype=jnp.float32)
  np.testing.assert_allclose(np.asarray(got), np.asarray(dense), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [7, 60])
def test_onehot_conv3x3_gradient_equals_dense_conv_gradient(k):
  rng = np.random.default_rng(1)
  c_out = 8
  y = jnp.asarray(_onehot(rng, (2, 6, 7), k))
  kernel = jnp.asarray(rng.standard_normal((3, 3, k, c_out)).astype(np.float32))
  bias = jnp.asarray(rng.standard_normal((c_out,)).astype(np.float32))
  g = jnp.asarray(rng.standard_normal((2, 6, 7, c_out)).astype(np.float32))
  dense = lambda w, b: jax.lax.conv_general_dilated(
      y, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
  index = layers.onehot_index(y)
  lookup = lambda w, b: layers.onehot_conv3x3(index, w, b, k, dtype=jnp.float32)
  want = jax.vjp(dense, kernel, bias)[1](g)
  got = jax.jit(lambda w, b: jax.vjp(lookup, w, b)[1](g))(kernel, bias)
  for a, b in zip(got, want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4)


def test_lookup_equals_dense_with_edge_channel():
  cfg = dataclasses.replace(TINY, num_classes=6, edge_channel=True)
  params = _random_params(cfg)
  x, t, rng = _inputs(cfg)
  label = _onehot(rng, (2, 8, 8), 5)
  edge = (rng.random((2, 8, 8, 1)) < 0.3).astype(np.float32)
  cond = jnp.asarray(np.concatenate([label, edge], -1))
  lookup = torch_import.unet_from_params(cfg, params)
  dense = torch_import.unet_from_params(dataclasses.replace(cfg, onehot_lookup=False), params)
  a = np.asarray(_apply(lookup, jnp.asarray(x), jnp.asarray(t), cond))
  b = np.asarray(_apply(dense, jnp.asarray(x), jnp.asarray(t), cond))
  assert a.shape == (2, 8, 8, 6)
  assert np.abs(b).max() > 0.1
  np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * np.abs(b).max())


@pytest.mark.parametrize("lookup,edge", [(True, False), (False, False), (True, True)])
def test_with_unconditional_equals_the_doubled_batch(lookup, edge):
  """The guided pair shares the encoder and computes the all-zero map's SPADE modulation
  once; it must equal one call on [cond, zeros]."""
  cfg = dataclasses.replace(TINY, num_classes=6, edge_channel=edge, onehot_lookup=lookup)
  model = torch_import.unet_from_params(cfg, _random_params(cfg))
  x, _, rng = _inputs(cfg, b=3)
  t = jnp.array([3, 500, 917], jnp.int32)
  label = _onehot(rng, (3, 8, 8), cfg.num_onehot)
  cond = np.concatenate([label, (rng.random((3, 8, 8, 1)) < 0.3).astype(np.float32)], -1) \
      if edge else label
  graphdef, state = nnx.split(model)
  pair = jax.jit(lambda s, *a: nnx.merge(graphdef, s).with_unconditional(*a))
  got_c, got_u = pair(state, x, t, cond)
  want = np.asarray(_apply(model, np.concatenate([x, x]), np.concatenate([t, t]),
                           np.concatenate([cond, np.zeros_like(cond)])))
  assert np.abs(want[3:]).max() > 0.1 and np.abs(want[:3] - want[3:]).max() > 0.1
  tol = 1e-5 * np.abs(want).max()
  np.testing.assert_allclose(np.asarray(got_c), want[:3], rtol=0, atol=tol)
  np.testing.assert_allclose(np.asarray(got_u), want[3:], rtol=0, atol=tol)


@pytest.mark.parametrize("num_classes,expected", [
    (151, 660_608_518),  # ADE20K
    (20, 653_062_918),  # CelebAMask-HQ (19 classes + edge)
    (184, 662_509_318),  # COCO-Stuff (183 classes + edge)
])
def test_published_parameter_counts(num_classes, expected):
  cfg = UNetConfig(image_size=256, model_channels=256, channel_mult=(1, 1, 2, 2, 4, 4),
                   num_res_blocks=2, attention_resolutions=(8, 16, 32), num_head_channels=64,
                   num_classes=num_classes, resblock_updown=True, use_scale_shift_norm=True,
                   out_channels=6)
  assert count_params(cfg) == expected


def test_published_structure_and_output_shape():
  cfg = UNetConfig()  # the published ADE20K config
  model = abstract_unet(cfg)
  assert model.num_skips == 18
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert all(isinstance(v, jax.ShapeDtypeStruct) for v in leaves)  # nothing allocated
  out = nnx.eval_shape(lambda m, x, t, c: m(x, t, c), model,
                       jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32),
                       jax.ShapeDtypeStruct((1,), jnp.int32),
                       jax.ShapeDtypeStruct((1, 256, 256, 151), jnp.float32))
  assert out.shape == (1, 256, 256, 6) and out.dtype == jnp.float32


def test_zero_init_gives_zero_output():
  cfg = TINY
  # The constructor's zero-init layers (only these leaves are computed: XLA drops the rest).
  zero_leaves = jax.jit(lambda: [
      v for path, v in nnx.to_flat_state(nnx.state(UNet(cfg, rngs=nnx.Rngs(0)), nnx.Param))
      if path[-2] in ("out_conv", "proj_out")])()
  # 3 ResBlocks + 7 SDMResBlocks (out_conv), 4 attention blocks (proj_out), the head.
  assert len(zero_leaves) == 2 * (3 + 7 + 4 + 1)
  assert all(float(jnp.abs(v[...]).max()) == 0 for v in zero_leaves)
  model = torch_import.unet_from_params(cfg, init_params_host(cfg))
  x, t, rng = _inputs(cfg)
  out = _apply(model, jnp.asarray(x), jnp.asarray(t), jnp.asarray(_onehot(rng, (2, 8, 8), 6)))
  assert out.shape == (2, 8, 8, 6) and out.dtype == jnp.float32
  assert float(jnp.abs(out).max()) == 0.0


def test_bf16_forward_close_to_f32():
  params = _random_params(TINY, scale=0.1)
  x, t, rng = _inputs(TINY)
  args = (jnp.asarray(x), jnp.asarray(t), jnp.asarray(_onehot(rng, (2, 8, 8), 6)))
  ref = _apply(torch_import.unet_from_params(TINY, params), *args)
  bf16 = _apply(torch_import.unet_from_params(dataclasses.replace(TINY, dtype="bfloat16"),
                                              params), *args)
  assert bf16.dtype == jnp.float32
  scale = float(jnp.abs(ref).max())
  assert scale > 0.1
  assert float(jnp.abs(bf16 - ref).max()) <= BF16_REL_TOL * scale


def test_remat_same_output_and_gradients():
  # One level (ResBlock + attention, middle, decoder): small graph, every block kind.
  cfg = UNetConfig(image_size=8, model_channels=32, channel_mult=(1,), num_res_blocks=1,
                   attention_resolutions=(1,), num_head_channels=16, num_classes=6)
  params = _random_params(cfg, scale=0.1)
  x, t, rng = _inputs(cfg)
  args = (jnp.asarray(x), jnp.asarray(t), jnp.asarray(_onehot(rng, (2, 8, 8), 6)))

  def value_and_grad(c):
    graphdef, state = nnx.split(torch_import.unet_from_params(c, params))
    loss = lambda s: jnp.sum(jnp.square(nnx.merge(graphdef, s)(*args)))
    return jax.jit(jax.value_and_grad(loss))(state)

  l0, g0 = value_and_grad(cfg)
  l1, g1 = value_and_grad(dataclasses.replace(cfg, remat=True))
  np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
  # Same maths; XLA may fuse the recomputed blocks differently (float rounding only, which
  # matters for gradients that cancel to ~0, e.g. conv biases in front of a GroupNorm).
  scale = max(float(np.abs(np.asarray(a)).max()) for a in jax.tree.leaves(g0))
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6 * scale)


def test_config_from_reference_and_validation(fixtures_dir):
  with np.load(fixtures_dir / "unet.npz") as npz:
    cfg = UNetConfig.from_reference_kwargs(str(npz["config"]))
  assert cfg.attention_resolutions == (2,) and cfg.channel_mult == (1, 2)
  assert cfg.num_classes == 5 and cfg.num_head_channels == 16
  assert UNetConfig(**cfg.to_dict()) == cfg
  with pytest.raises(ValueError, match="dtype"):
    UNetConfig(dtype="float16")
  with pytest.raises(ValueError, match="unsupported constructor arguments"):
    UNetConfig.from_reference_kwargs({"num_classes": 3, "bogus": 1})
  model = abstract_unet(TINY)
  with pytest.raises(ValueError, match="cond has 5 channels"):
    model(jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,), jnp.int32), jnp.zeros((1, 8, 8, 5)))
