"""The sanity guard (issue 14, P4): a finite but diverging run stops before saving, and the
next start resumes from the last sane checkpoint."""

import os

from conftest import load_config
import jax
import pytest

from scdm_jax import checkpointing
from scdm_jax.modes import train
from scdm_jax.training import guard as guard_lib

jax.config.update("jax_disable_most_optimizations", True)


def _m(loss=1.0, g=1.0, p=10.0):
  return {"loss": loss, "grad_norm": g, "param_norm": p}


def test_guard_trips_on_grad_spike_param_jump_and_non_finite():
  guard = guard_lib.SanityGuard(10.0)
  for _ in range(6):
    assert guard.check(_m(g=1.0 + 0.1 * _)) is None
  assert "running median" in guard.check(_m(g=5e3))
  assert guard.check(_m(g=900.0)) is None  # big but under 1e3 x median
  assert "jumped" in guard.check(_m(p=10.0 * 101))
  assert guard.check(_m(p=10.0 * 99)) is None
  assert "non-finite" in guard.check(_m(loss=float("inf")))
  # The first step compares the param norm with the start.
  assert "jumped" in guard_lib.SanityGuard(1.0).check(_m(p=1e3))


def test_huge_lr_stops_at_the_last_sane_step_and_resumes_from_it(tmp_path):
  workdir = str(tmp_path / "run")
  train.run(load_config("tiny", **{"train.total_steps": 1}), workdir)
  with pytest.raises(FloatingPointError, match=r"Sanity guard tripped at step 2: the param "
                     r"norm jumped .*last sane checkpoint .* is step 1, which the next start"):
    train.run(load_config("tiny", **{"train.total_steps": 3, "optim.lr": 1e6,
                                     "train.checkpoint_every": 1}), workdir)
  ck = checkpointing.TrainCheckpointer(os.path.join(workdir, "checkpoints"))
  assert ck.all_steps() == [1]  # the poisoned step 2 was never written
  ck.close()
  summary = train.run(load_config("tiny", **{"train.total_steps": 2}), workdir)
  assert summary["start_step"] == 1 and summary["step"] == 2
