"""Label diffusion: scdm-method.md §12 items 1-11, psi files and statistics, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from scdm_jax.diffusion import label_diffusion as ld
from scdm_jax.diffusion import schedules

def rkey(seed):
  # "rbg" keys: threefry programs take seconds to compile on small CPUs, and the library
  # works with any key implementation.
  return jax.random.key(seed, impl="rbg")


# Largest psi of the shipped files (scdm-method.md §3.3) and test values of §3.4.
PSI_MAX = {"ade20k": 5752.2, "celeba": 820.51, "coco": 862.24}


def random_label(seed, b, h, w, k, zero_frac=0.1):
  """One-hot maps with a fraction of all-zero pixels (NumPy: nothing to compile)."""
  rng = np.random.default_rng(seed)
  y = np.eye(k, dtype=np.float32)[rng.integers(0, k, (b, h, w))]
  return y * (rng.random((b, h, w, 1)) >= zero_frac)


def nuniform(seed, shape):
  return np.random.default_rng(seed).random(shape, dtype=np.float32)


# Jitted (the schedule is static: it hashes by identity) so each test compiles once
# instead of dispatching many small eager ops.
diffuse = jax.jit(ld.diffuse_labels, static_argnums=3)
diffuse_cond = jax.jit(ld.diffuse_condition, static_argnums=(3, 4))
cfg_drop = jax.jit(ld.cfg_drop, static_argnums=2)
uniform = jax.jit(jax.random.uniform, static_argnums=1)


def uniform_schedule(T=1000):
  return ld.LabelSchedule.create("uniform", num_original_steps=T)


# -------------------------------------------------------------- item 1: floor trick

@settings(max_examples=4, deadline=None)
@given(st.integers(1, 999))
def test_floor_trick_mean(t):
  sched = uniform_schedule()
  y = jnp.ones((1, 1000, 1000, 1))
  u = nuniform(t, (1, 1000, 1000))
  m = np.asarray(diffuse(y, jnp.array([t]), u, sched))
  assert set(np.unique(m)) <= {0.0, 1.0}
  assert abs(m.mean() - (1 - t / 1000)) <= 0.002


def test_floor_trick_extremes():
  sched = uniform_schedule()
  y = jnp.ones((1, 64, 64, 1))
  u = nuniform(0, (1, 64, 64))
  u[0, 0, 0] = 0.0
  u[0, 0, 1] = np.nextafter(np.float32(1), np.float32(0))
  assert np.all(diffuse(y, jnp.array([0]), u, sched) == 1)  # g = 1 keeps
  assert np.all(diffuse(y, jnp.array([1000]), u, sched) == 0)  # g = 0 masks


def test_floor_trick_exact_in_float32():
  # 1 + u rounds to 2 in float32 for u close to 1: the mask must still be 1, not 2.
  sched = ld.LabelSchedule.create("classwise", np.array([5.0]), 1000)
  u = jnp.full((1, 1, 1), np.nextafter(np.float32(1), np.float32(0)))
  assert float(diffuse(jnp.ones((1, 1, 1, 1)), jnp.array([0]), u, sched).max()) == 1.0


# -------------------------------------------------------------- items 2, 3: shared mask, absorbing

@settings(max_examples=15, deadline=None)
@given(st.integers(1, 7), st.lists(st.floats(0.01, 6000.0), min_size=7, max_size=7),
       st.integers(0, 1000), st.integers(0, 2**31 - 1))
def test_mask_is_channel_shared_and_absorbing(k, psi, t, seed):
  # Fixed shapes, eager calls: every op is compiled once for all examples.
  sched = ld.LabelSchedule.create("classwise", np.array(psi), 1000)
  y0 = random_label(seed, 2, 9, 7, 7, zero_frac=0.2)
  y0[..., k:] = 0  # only k classes in use
  u = nuniform(seed + 1, (2, 9, 7))
  y = np.asarray(ld.diffuse_labels(y0, jnp.array([t, 1000 - t]), u, sched))
  kept = np.all(y == y0, -1)
  zero = np.all(y == 0, -1)
  assert np.all(kept | zero)  # never a partial one-hot
  assert set(np.unique(y.sum(-1))) <= {0.0, 1.0}
  assert np.all(zero[y0.sum(-1) == 0])  # all-zero stays all-zero


# -------------------------------------------------------------- items 4, 5, 7, 8: values

def test_boundary_values():
  psi = np.array([0.5, 0.99923, 1.0001, 3.1006, 36.13, 974.0, 5752.2])
  sched = ld.LabelSchedule.create("classwise", psi, 1000)
  g = sched.gamma_table()
  assert np.all(g[0] == 1.0)
  # τ = 1: 0 for psi < 1; for psi > 1 the reference's +1e-7 leaves 1e-7 / (psi - 1 + 1e-7)
  # (not exactly 0: 1e-3 for psi = 1.0001).
  np.testing.assert_allclose(g[1000], np.where(psi < 1, 0.0, 1e-7 / (psi - 1 + 1e-7)),
                             rtol=1e-6, atol=1e-15)
  y0 = random_label((0), 2, 8, 8, 7)
  u = nuniform(1, (2, 8, 8))
  np.testing.assert_array_equal(diffuse(y0, jnp.array([0, 0]), u, sched), y0)


@pytest.mark.parametrize("name,at999,at960", [("ade20k", 0.00862, 0.2927),
                                              ("celeba", 0.00670, 0.2357),
                                              ("coco", 0.00674, 0.2372)])
def test_max_gamma_of_shipped_files(name, at999, at960):
  g = ld.classwise_gamma(np.array([0.999, 0.96], np.float32), [PSI_MAX[name]])[:, 0]
  assert g[0] == pytest.approx(at999, abs=5e-6)
  assert g[1] == pytest.approx(at960, abs=5e-5)


def test_table_3_4():
  ts = np.array([0, 40, 250, 500, 750, 900, 960, 999])
  tau = (ts.astype(np.float32) / np.float32(1000)).astype(np.float64)
  rows = {
      0.5: [1, 0.960, 0.750, 0.500, 0.250, 0.100, 0.040, 0.001],
      3.1006: [1, 0.978, 0.844, 0.638, 0.364, 0.158, 0.065, 0.0017],
      36.1: [1, 0.996, 0.959, 0.857, 0.609, 0.310, 0.138, 0.0037],
      974.0: [1, 1.000, 0.995, 0.969, 0.822, 0.498, 0.241, 0.0069],
      5752.2: [1, 1.000, 0.999, 0.987, 0.885, 0.579, 0.293, 0.0086],
  }
  for psi, want in rows.items():
    got = ld.classwise_gamma(tau, [psi])[:, 0]
    # 3-decimal table; its 0.138 at psi=36.1, t=960 is 0.13744 (a rounding slip of §3.4).
    np.testing.assert_allclose(got, want, atol=6e-4)
  # The two 4-decimal values quoted in §12 item 8.
  assert round(float(ld.classwise_gamma([0.75], [974.0])[0, 0]), 4) == 0.8218
  assert round(float(ld.classwise_gamma([0.5], [3.1006])[0, 0]), 4) == 0.6378


@settings(max_examples=20, deadline=None)
@given(st.floats(1e-4, 0.9999), st.floats(1.0001, 1e4))
def test_linear_cases_and_monotone(psi_lo, psi_hi):
  tau = np.linspace(0, 1, 1001)
  g = ld.classwise_gamma(tau, [psi_lo, psi_hi, 0.5])
  np.testing.assert_array_equal(g[:, 0], 1 - tau)  # psi < 1: exactly linear
  np.testing.assert_array_equal(g[:, 2], 1 - tau)
  assert np.all(g[:, 1] >= 1 - tau - 1e-12)  # psi > 1: survives longer
  assert np.all(np.diff(g, axis=0) <= 1e-12)  # non-increasing in τ


def test_tau_one_absorbs_everything():
  psi = np.array([0.5, 3.0, 800.0, 5000.0])
  sched = ld.LabelSchedule.create("classwise", psi, 1000)
  u = nuniform(0, (2, 16, 16))
  y = random_label((1), 2, 16, 16, 4)
  y_noisy = random_label((2), 2, 16, 16, 4, zero_frac=0.5)
  t = jnp.array([1000, 1000])
  a, b = diffuse(y, t, u, sched), diffuse(y_noisy, t, u, sched)
  assert np.all(np.asarray(a) == 0) and np.all(np.asarray(b) == 0)  # = the CFG null label


# -------------------------------------------------------------- item 6: monotone with fixed u

def test_fixed_u_reveal_is_monotone():
  psi = np.array([0.5, 3.1, 36.0, 974.0])
  sched = ld.LabelSchedule.create("classwise", psi, 1000)
  y = random_label((0), 1, 32, 32, 4, zero_frac=0)
  u = nuniform(1, (1, 32, 32))
  ts = jnp.arange(0, 1001, 40)
  vis = jax.vmap(lambda t: diffuse(y, t[None], u, sched).sum(-1))(ts)
  vis = np.asarray(vis)
  assert np.all(vis[1:] <= vis[:-1])  # visible set shrinks as t grows


def test_fresh_masks_match_marginal():
  psi = np.array([0.5, 36.13, 974.0])
  sched = ld.LabelSchedule.create("classwise", psi, 1000)
  y = jax.nn.one_hot(jnp.tile(jnp.arange(3), 100 * 300).reshape(1, 300, 300), 3)
  for t in (250, 750, 960):
    u = nuniform(t, (1, 300, 300))
    yt = np.asarray(diffuse(y, jnp.array([t]), u, sched))
    frac = yt.sum((0, 1, 2)) / np.asarray(y).sum((0, 1, 2))
    np.testing.assert_allclose(frac, sched.gamma_table()[t], atol=0.01)


# -------------------------------------------------------------- item 9, 10: respacing, uniform

def test_ddim25_label_tau():
  tmap = schedules.space_timesteps(1000, "ddim25")
  sched = ld.LabelSchedule.create("classwise", np.array([0.5]), 1000)
  g = sched.gamma_table()
  assert g[tmap[-1], 0] == pytest.approx(1 - 0.96) and g[tmap[0], 0] == 1.0


def test_uniform_variants():
  corrected = uniform_schedule()
  g = corrected.gamma_table()[:, 0]
  np.testing.assert_allclose(g[:1000], 1 - np.arange(1000) / 1000, atol=1e-7)
  ref = ld.LabelSchedule.create("uniform", num_original_steps=1000,
                                reference_uniform_off_by_one=True)
  np.testing.assert_allclose(ref.gamma_table()[:1000, 0], 1 - (np.arange(1000) + 1) / 1000,
                             atol=1e-12)
  tmap = schedules.space_timesteps(1000, "ddim25")
  on25 = ref.on_chain(tmap)
  g25 = on25.gamma_table()[tmap, 0]
  np.testing.assert_allclose(g25, 1 - (np.arange(25) + 1) / 25, atol=1e-12)
  assert g25[0] == pytest.approx(0.96)  # the reference masks 4 % at the last step
  assert corrected.on_chain(tmap) is corrected


def test_reference_tau_1000_for_other_T():
  psi = np.array([0.5, 10.0])
  ours = ld.LabelSchedule.create("classwise", psi, 500)
  ref = ld.LabelSchedule.create("classwise", psi, 500, reference_tau_1000=True)
  assert ours.gamma_table()[500, 0] == 0 and ref.gamma_table()[500, 0] == pytest.approx(0.5)
  same = ld.LabelSchedule.create("classwise", psi, 1000, reference_tau_1000=True)
  np.testing.assert_array_equal(same.gamma_table(),
                                ld.LabelSchedule.create("classwise", psi, 1000).gamma_table())
  # T > 1000: the reference's gamma < 0 gives negative labels; the option reproduces it.
  bug = ld.LabelSchedule.create("classwise", psi, 2000, reference_tau_1000=True)
  y = jnp.ones((1, 4, 4, 1)) * jnp.array([1.0, 0.0])
  out = diffuse(y, jnp.array([1999]), jnp.zeros((1, 4, 4)), bug)
  assert float(out.min()) == -1.0


def test_none_schedule_is_identity():
  sched = ld.LabelSchedule.create("none")
  y = random_label((0), 2, 8, 8, 5)
  u = nuniform(1, (2, 8, 8))
  np.testing.assert_array_equal(diffuse(y, jnp.array([999, 1000]), u, sched), y)


# -------------------------------------------------------------- item 11: edge, CFG drop

def test_edge_never_diffused_and_cfg_drop():
  sched = uniform_schedule()
  y = random_label((0), 4, 16, 16, 5)
  edge = (nuniform(1, (4, 16, 16, 1)) > 0.7).astype(jnp.float32)
  cond = jnp.concatenate([y, edge], -1)
  out = diffuse_cond(cond, jnp.array([999, 500, 0, 1000]), rkey(2), sched, 5)
  np.testing.assert_array_equal(out[..., 5:], edge)
  assert float(out[3, ..., :5].sum()) == 0 and np.array_equal(out[2], cond[2])
  big = jnp.ones((20000, 1, 1, 6))
  dropped = cfg_drop(big, rkey(3), 0.2)
  per_sample = np.asarray(dropped.reshape(20000, -1))
  assert np.all((per_sample == 0).all(1) | (per_sample == 1).all(1))  # label and edge together
  assert abs((per_sample == 0).all(1).mean() - 0.2) < 0.01
  np.testing.assert_array_equal(cfg_drop(cond, rkey(3), 0.0), cond)


# -------------------------------------------------------------- psi files and statistics

def test_load_psi(tmp_path):
  p = tmp_path / "toy_psiphi.npy"
  np.save(p, np.array([3.0, 100.0, 1.6e-4]))
  np.testing.assert_array_equal(ld.load_psi(p, 3), [3.0, 100.0, 1.6e-4])
  np.testing.assert_array_equal(ld.load_psi(p, 3, force_last_linear=True), [3.0, 100.0, 0.5])
  with pytest.raises(ValueError, match=r"toy_psiphi.npy.*3 entries.*4 label classes"):
    ld.load_psi(p, 4)
  np.save(p, np.array([3.0, 0.0, -1.0]))
  with pytest.raises(ValueError, match=r"toy_psiphi.npy.*indices \[1, 2\]"):
    ld.load_psi(p, 3)
  with pytest.raises(FileNotFoundError):
    ld.load_psi(tmp_path / "missing.npy", 3)


def test_psi_from_statistics():
  # class 0 covers 25 % of the 4 images it is in, class 1 1 % of 2 images, class 2 absent.
  psi = ld.psi_from_statistics([1.0, 0.02, 0.0], [4, 2, 0])
  np.testing.assert_allclose(psi, [4.0, 100.0, 0.5])
  assert ld.psi_from_statistics([0.0], [0], absent_value=0.7)[0] == 0.7
  with pytest.raises(ValueError, match=r"\[0\]"):
    ld.psi_from_statistics([0.0, 1.0], [3, 2])
  with pytest.raises(ValueError, match="same length"):
    ld.psi_from_statistics([1.0], [1, 2])


def test_schedule_bad_inputs():
  with pytest.raises(ValueError, match=r"indices \[1\]"):
    ld.LabelSchedule.create("classwise", np.array([2.0, -3.0]))
  with pytest.raises(ValueError, match="'quadratic'"):
    ld.LabelSchedule.create("quadratic")
  with pytest.raises(ValueError, match="needs psi"):
    ld.LabelSchedule.create("classwise")
  sched = ld.LabelSchedule.create("classwise", np.array([2.0, 3.0]))
  with pytest.raises(ValueError, match="3 channels.*2 classes"):
    diffuse(jnp.zeros((1, 2, 2, 3)), jnp.array([0]), jnp.zeros((1, 2, 2)), sched)


def test_validate_label_map():
  y = np.asarray(random_label((0), 2, 4, 4, 3))
  ld.validate_label_map(y)
  bad = y.copy()
  bad[1, 2, 3] = [1, 1, 0]
  with pytest.raises(ValueError, match=r"pixel \(1, 2, 3\) has 2 classes"):
    ld.validate_label_map(bad)
  bad = y.copy()
  bad[0, 1, 1, 2] = 0.5
  with pytest.raises(ValueError, match=r"label\[\(0, 1, 1, 2\)\] = .*0.5"):
    ld.validate_label_map(bad)
