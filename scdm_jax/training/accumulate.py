"""Gradient accumulation: the mean of (terms, grads) over micro-batches in one `lax.scan`.

Shared by the SCDM and the Paint-by-Example train steps, so `train.grad_accum` means the
same in both: micro-batch i takes rows i, i + accum, i + 2 accum, ... of the global batch
(rows are laid out contiguously per device, so every micro-batch stays spread over every
device) and gets the key `fold_in(key, i)`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def mean_over_micro_batches(grad_of: Callable[[Any, Any], Any], batch: Any, key, accum: int,
                            batch_sharding=None) -> Any:
  """`grad_of(batch, key) -> (terms, grads)`, averaged over `accum` micro-batches.

  With `accum == 1` this is `grad_of(batch, key)` itself (the key is not folded).
  """
  if accum == 1:
    return grad_of(batch, key)
  split = lambda x: x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1)
  micro = jax.tree.map(split, batch)

  def body(carry, inp):
    i, mb = inp
    if batch_sharding is not None:
      mb = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, batch_sharding), mb)
    out = grad_of(mb, jax.random.fold_in(key, i))
    return jax.tree.map(jnp.add, carry, out), None

  shapes = jax.eval_shape(grad_of, jax.tree.map(lambda x: x[0], micro), key)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  total, _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
  return jax.tree.map(lambda x: x / accum, total)
