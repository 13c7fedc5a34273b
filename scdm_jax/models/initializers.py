"""PyTorch's default Conv/Linear initialiser, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fast to run eagerly.

`jax.random.uniform(key, shape)` compiles one program per distinct shape, and a threefry
program takes about 0.4 s to compile on a CPU: a UNet with 40 distinct parameter shapes
spent 16 of its 20 s of eager construction compiling them (and one jitted initialiser of
every parameter took minutes). Here every parameter draws its bits in fixed-size blocks,
block `j` from `fold_in(key, j)`, so eagerly one compiled block program serves every
shape, and the float maths runs in numpy.

Traced (under `jax.jit` or `nnx.eval_shape`), the same blocks come from one vmapped call.
Both paths give the same bits: the bits are integer maths, `u = bits -> [0, 1)` is exact,
`2u - 1` is exact in float32 (u has 23 bits), and `(2u - 1) * bound` is a single rounded
multiply, the same in numpy and XLA whatever XLA fuses.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

BLOCK = 1 << 14  # uniforms per block: at most this many drawn and thrown away per tensor


@jax.jit
def _block_bits(key: jax.Array, j: jax.Array) -> jax.Array:
  return jax.random.bits(jax.random.fold_in(key, j), (BLOCK,), jnp.uint32)


def _unit_from_bits(bits, xp):
  """Bits -> float32 in [0, 1) exactly as jax.random.uniform does (23 mantissa bits)."""
  one = xp.asarray(0x3F800000, dtype=xp.uint32)
  mantissa = (bits >> xp.asarray(9, dtype=xp.uint32)) | one
  if xp is np:
    return mantissa.view(np.float32) - np.float32(1.0)
  return jax.lax.bitcast_convert_type(mantissa, jnp.float32) - jnp.float32(1.0)


def symmetric_uniform(key: jax.Array, shape: tuple[int, ...], bound: float,
                      dtype=jnp.float32) -> jax.Array:
  """Uniform on [-bound, bound), bit-identical eagerly and under tracing."""
  n = math.prod(shape)
  blocks = max(1, -(-n // BLOCK))
  b = np.float32(bound)
  if isinstance(key, jax.core.Tracer):
    bits = jax.vmap(lambda j: _block_bits(key, j))(jnp.arange(blocks, dtype=jnp.uint32))
    u = _unit_from_bits(bits.reshape(-1)[:n], jnp)
    return ((u * 2.0 - 1.0) * b).reshape(shape).astype(dtype)
  # Eager: one compiled block program, the float maths on the host.
  pending = [_block_bits(key, np.uint32(j)) for j in range(blocks)]  # dispatched async
  bits = np.concatenate([np.asarray(x) for x in pending])
  u = _unit_from_bits(bits[:n], np)
  values = ((u * np.float32(2.0) - np.float32(1.0)) * b).reshape(shape)
  return jnp.asarray(values, dtype=dtype)


def torch_uniform(fan_in: int):
  """An `init(key, shape, dtype)` for PyTorch's default Conv/Linear initialisation."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return symmetric_uniform(key, tuple(shape), bound, dtype)

  return init
