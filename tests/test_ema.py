"""The EMA decay schedule used by the train step."""

import numpy as np

from scdm_jax import state as state_lib


def test_constant_decay_without_warmup():
  for step in (0, 5, 10_000):
    assert float(state_lib.ema_decay_at(step, 0.9999, False)) == np.float32(0.9999)


def test_warmup_starts_low_and_reaches_the_configured_decay():
  decays = [float(state_lib.ema_decay_at(s, 0.995, True)) for s in (0, 10, 100, 10_000)]
  np.testing.assert_allclose(decays[:3], [0.1, 11 / 20, 101 / 110], rtol=1e-6)
  assert decays[3] == np.float32(0.995)
  assert decays == sorted(decays)


def test_ema_update_moves_towards_params():
  ema = {"w": np.zeros(3, np.float32)}
  params = {"w": np.ones(3, np.float32)}
  out = state_lib.ema_update(ema, params, 0.9)
  np.testing.assert_allclose(out["w"], 0.1, rtol=1e-6)
