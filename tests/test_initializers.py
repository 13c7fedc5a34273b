"""The fast PyTorch-default initialiser and the host-built train state."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scdm_jax import sharding
from scdm_jax import state as state_lib
from scdm_jax.models import initializers

SHAPES = [(3,), (3, 3, 17, 5), (initializers.BLOCK,), (initializers.BLOCK + 1,),
          (3, 3, 64, 200)]


@pytest.mark.parametrize("shape", SHAPES)
def test_eager_and_traced_give_the_same_bits(shape):
  key = jax.random.key(7)
  bound = 1.0 / math.sqrt(33)
  eager = np.asarray(initializers.symmetric_uniform(key, shape, bound))
  traced = np.asarray(jax.jit(
      lambda k: initializers.symmetric_uniform(k, shape, bound))(key))
  assert eager.shape == shape and eager.dtype == np.float32
  np.testing.assert_array_equal(eager, traced)


def test_distribution_is_the_torch_default():
  fan_in = 3 * 3 * 64
  bound = 1.0 / math.sqrt(fan_in)
  x = np.asarray(initializers.torch_uniform(fan_in)(jax.random.key(0), (3, 3, 64, 256)))
  assert x.min() >= -bound and x.max() < bound
  assert x.min() < -0.99 * bound and x.max() > 0.99 * bound
  assert abs(x.mean()) < 0.01 * bound
  assert abs(x.std() - bound / math.sqrt(3)) < 0.01 * bound
  # Blocks are independent streams: no block repeats another.
  flat = x.reshape(-1)
  assert not np.array_equal(flat[:initializers.BLOCK], flat[initializers.BLOCK:2 * initializers.BLOCK])


def test_different_keys_differ():
  a = initializers.symmetric_uniform(jax.random.key(0), (100,), 1.0)
  b = initializers.symmetric_uniform(jax.random.key(1), (100,), 1.0)
  assert not np.array_equal(np.asarray(a), np.asarray(b))


def _tiny_config():
  import importlib.util
  import pathlib
  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny.py"
  spec = importlib.util.spec_from_file_location("tiny_cfg_init", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def test_train_state_is_the_same_for_a_seed_on_any_mesh():
  config = _tiny_config()
  config.mesh.fsdp = 1
  one = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
  eight = sharding.make_mesh(config.mesh)
  _, a, _ = state_lib.create_train_state(config, one, 3)
  _, b, shard_b = state_lib.create_train_state(config, eight, 3)
  _, c, _ = state_lib.create_train_state(config, one, 4)
  la, lb, lc = (jax.tree.leaves(s) for s in (a, b, c))
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # Born in the shardings asked for.
  for x, s in zip(lb, jax.tree.leaves(shard_b)):
    assert x.sharding == s
  assert any(not np.array_equal(np.asarray(x), np.asarray(z))
             for x, z in zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params)))
  # The EMA starts equal to the parameters, in its own buffers (both are donated).
  for p, e in zip(jax.tree.leaves(a.params), jax.tree.leaves(a.ema)):
    np.testing.assert_array_equal(np.asarray(p), np.asarray(e))
    assert p.unsafe_buffer_pointer() != e.unsafe_buffer_pointer()


def test_fsdp_shards_are_placed():
  config = _tiny_config()
  config.mesh.fsdp = 2
  config.mesh.fsdp_min_size = 0
  mesh = sharding.make_mesh(config.mesh)
  _, st, shardings = state_lib.create_train_state(config, mesh, 0)
  sharded = [x for x in jax.tree.leaves(st.params)
             if x.sharding.spec != jax.sharding.PartitionSpec() and x.ndim]
  assert sharded, "fsdp=2 with fsdp_min_size=0 should shard some parameters"
  config.mesh.fsdp = 1
  _, ref, _ = state_lib.create_train_state(config, sharding.make_mesh(config.mesh), 0)
  for x, y in zip(jax.tree.leaves(st.params), jax.tree.leaves(ref.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
