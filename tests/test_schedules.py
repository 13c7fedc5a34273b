"""Beta schedules and respacing (guided-diffusion semantics)."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from scdm_jax.diffusion import schedules
from scdm_jax.diffusion.gaussian import GaussianDiffusion


def test_linear_betas():
  b = schedules.get_betas("linear", 1000)
  assert b.dtype == np.float64 and b.shape == (1000,)
  assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)
  # Rescaled for other T: same range as 1000 steps scaled by 1000/T.
  b2 = schedules.get_betas("linear", 500)
  assert b2[0] == pytest.approx(2e-4) and b2[-1] == pytest.approx(0.04)


def test_cosine_betas():
  b = schedules.get_betas("cosine", 1000)
  assert b.shape == (1000,) and np.all(b > 0) and np.all(b <= 0.999)
  ac = np.cumprod(1 - b)
  assert np.all(np.diff(ac) < 0)


def test_ddim25_map():
  m = schedules.space_timesteps(1000, "ddim25")
  np.testing.assert_array_equal(m, np.arange(0, 1000, 40))
  assert m[-1] == 960


def test_sections_and_plain_number():
  m = schedules.space_timesteps(1000, "50,30,20")
  assert len(m) == 100 and m[0] == 0 and m[-1] == 999
  assert len(schedules.space_timesteps(1000, "250")) == 250
  np.testing.assert_array_equal(schedules.space_timesteps(10, None), np.arange(10))


def test_respaced_alpha_bar_matches_original():
  full = GaussianDiffusion.create("linear", 1000)
  for spec in ("ddim25", "250", "50,30,20"):
    d = GaussianDiffusion.create("linear", 1000, spec)
    np.testing.assert_allclose(d.table("alphas_cumprod"),
                               full.table("alphas_cumprod")[d.timestep_map], rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 400), st.integers(1, 400))
def test_ddim_stride_property(T, stride):
  stride = min(stride, T)
  n = len(range(0, T, stride))
  m = schedules.space_timesteps(T, f"ddim{n}")
  assert len(m) == n and m[0] == 0


@settings(max_examples=25, deadline=None)
@given(st.integers(20, 500), st.lists(st.integers(1, 5), min_size=1, max_size=4))
def test_sections_property(T, counts):
  m = schedules.space_timesteps(T, ",".join(map(str, counts)))
  assert len(m) == sum(counts)
  assert np.all(np.diff(m) > 0) and m[0] == 0 and m[-1] < T


def test_bad_inputs():
  with pytest.raises(ValueError, match="ddim600"):
    schedules.space_timesteps(1000, "ddim600")  # no integer stride gives exactly 600
  with pytest.raises(ValueError, match="section 1 has 500 steps.*600"):
    schedules.space_timesteps(1000, "10,600")
  with pytest.raises(ValueError, match="'quadratic'"):
    schedules.get_betas("quadratic", 1000)
  with pytest.raises(ValueError, match="'ddimx'"):
    schedules.space_timesteps(1000, "ddimx")
  with pytest.raises(ValueError, match="'every-other'"):
    schedules.space_timesteps(1000, "every-other")
  with pytest.raises(ValueError, match="num_steps"):
    schedules.get_betas("linear", 0)
