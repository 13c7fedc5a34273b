"""Gradient accumulation (`training/accumulate.py`) and the learning-rate schedules."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scdm_jax import state as state_lib
from scdm_jax.training import accumulate


def _grad_of(batch, key):
  # A loss whose value depends on the rows and on the key, so a wrong split or key shows.
  w = jnp.arange(3.0)
  noise = jax.random.normal(key, (3,))
  def loss(w):
    return jnp.mean(jnp.square(batch["x"] @ (w + noise) - batch["y"]))
  value, grad = jax.value_and_grad(loss)(w)
  return {"loss": value}, {"w": grad}


def test_micro_batch_i_is_rows_i_mod_accum_with_key_i():
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(6, 3)).astype(np.float32),
           "y": rng.normal(size=(6,)).astype(np.float32)}
  key = jax.random.key(3)
  got = jax.jit(lambda b, k: accumulate.mean_over_micro_batches(_grad_of, b, k, 3))(batch, key)
  parts = [_grad_of({k: v[i::3] for k, v in batch.items()}, jax.random.fold_in(key, i))
           for i in range(3)]
  want = jax.tree.map(lambda *xs: sum(xs) / 3, *parts)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)
  # accum = 1 is the plain call, key unchanged.
  one = accumulate.mean_over_micro_batches(_grad_of, batch, key, 1)
  jax.tree.map(np.testing.assert_array_equal, one, _grad_of(batch, key))


def _optim(**kw):
  return ml_collections.ConfigDict(dict({"lr": 1.0, "warmup_steps": 0, "cosine_steps": 0}, **kw))


@pytest.mark.parametrize("kw, steps, want", [
    ({}, (0, 50), (1.0, 1.0)),
    ({"warmup_steps": 10}, (0, 5, 10, 99), (0.0, 0.5, 1.0, 1.0)),
    ({"warmup_steps": 10, "cosine_steps": 100}, (5, 10, 60, 110, 500), (0.5, 1.0, 0.5, 0.0, 0.0)),
    ({"cosine_steps": 100}, (0, 50, 100), (1.0, 0.5, 0.0)),
])
def test_lr_schedule(kw, steps, want):
  fn = state_lib.lr_schedule(_optim(**kw))
  np.testing.assert_allclose([float(fn(s)) for s in steps], want, atol=1e-6)
