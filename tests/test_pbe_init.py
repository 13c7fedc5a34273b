"""conv_in widening 4 -> 9 (Paint by Example init): the widened UNet is the base UNet."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scdm_jax.models import pbe_init
from scdm_jax.models.sd_unet import SDUNet, SDUNetConfig

# One level keeps the eager forward passes short; conv_in is all that changes.
TINY = SDUNetConfig(block_out_channels=(16,), down_block_types=("CrossAttnDownBlock2D",),
                    up_block_types=("CrossAttnUpBlock2D",), layers_per_block=1,
                    num_heads=(2,), transformer_layers_per_block=(1,),
                    cross_attention_dim=8, norm_num_groups=8)


@pytest.fixture(scope="module")
def base():
  return SDUNet(TINY, rngs=nnx.Rngs(0))


def test_widened_unet_equals_base_bit_for_bit(base):
  wide = pbe_init.widen_conv_in(base)
  assert wide.config.in_channels == 9 and base.config.in_channels == 4
  assert wide.conv_in.kernel[...].shape == (3, 3, 9, 16)
  k = jax.random.split(jax.random.key(1), 4)
  z = jax.random.normal(k[0], (2, 8, 8, 4))
  ctx = jax.random.normal(k[1], (2, 1, 8))
  t = jnp.array([3, 900])
  ref = np.asarray(base(z, t, ctx))
  # Two different, large "anything" fills of the 5 new channels.
  for extra in (1e3 * jax.random.normal(k[2], (2, 8, 8, 5)), jnp.full((2, 8, 8, 5), -7.0)):
    out = np.asarray(wide(jnp.concatenate([z, extra], -1), t, ctx))
    np.testing.assert_array_equal(out, ref)


def test_new_slices_zero_old_copied_base_untouched(base):
  before = np.asarray(base.conv_in.kernel[...])
  wide = pbe_init.widen_conv_in(base)
  kw = np.asarray(wide.conv_in.kernel[...])
  np.testing.assert_array_equal(kw[:, :, :4], before)
  assert not kw[:, :, 4:].any()
  np.testing.assert_array_equal(np.asarray(base.conv_in.kernel[...]), before)
  assert base.conv_in.kernel[...].shape[2] == 4
  np.testing.assert_array_equal(np.asarray(wide.conv_out.kernel[...]),
                                np.asarray(base.conv_out.kernel[...]))


def test_state_and_pure_dict_forms(base):
  state = nnx.state(base)
  ws = pbe_init.widen_conv_in(state)
  assert isinstance(ws, nnx.State)
  wd = pbe_init.widen_conv_in(nnx.to_pure_dict(state))
  kernel = np.asarray(pbe_init.widen_conv_in(base).conv_in.kernel[...])
  np.testing.assert_array_equal(np.asarray(ws["conv_in"]["kernel"][...]), kernel)
  np.testing.assert_array_equal(np.asarray(wd["conv_in"]["kernel"]), kernel)
  # The widened state loads into a 9-channel module.
  wide = nnx.eval_shape(lambda: SDUNet(dataclasses.replace(TINY, in_channels=9),
                                       rngs=nnx.Rngs(0)))
  nnx.update(wide, ws)
  np.testing.assert_array_equal(np.asarray(wide.conv_in.kernel[...]), kernel)


def test_refuses_already_wide_and_non_unet(base):
  wide = pbe_init.widen_conv_in(base)
  with pytest.raises(ValueError, match="already has 9 input channels"):
    pbe_init.widen_conv_in(wide)
  with pytest.raises(ValueError, match="no conv_in.kernel"):
    pbe_init.widen_conv_in({"conv_out": {"kernel": np.zeros((3, 3, 4, 4))}})
  with pytest.raises(TypeError, match="SDUNet"):
    pbe_init.widen_conv_in(np.zeros(3))
