"""DDIM / PNDM(PLMS) against diffusers' own schedulers (random latents, fake eps)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scdm_jax.diffusion import ldm_schedulers as ls

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

PBE = dict(_class_name="PNDMScheduler", beta_end=0.012, beta_schedule="scaled_linear",
           beta_start=0.00085, num_train_timesteps=1000, prediction_type="epsilon",
           set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
           timestep_spacing="leading", trained_betas=None)


def _fake_eps(k, x):
  # Depends on the state, so a wrong history or restart shows in the result.
  g = np.random.default_rng(100 + k)
  return (g.standard_normal(x.shape).astype(np.float32) + 0.3 * x).astype(np.float32)


def _diffusers_chain(sched, x, eta=0.0, noises=None):
  xs = torch.from_numpy(x)
  for k, t in enumerate(sched.timesteps):
    eps = torch.from_numpy(_fake_eps(k, xs.numpy()))
    kw = {}
    if noises is not None:
      kw = dict(eta=eta, variance_noise=torch.from_numpy(np.array(noises[k])))
    xs = sched.step(eps, t, xs, **kw).prev_sample
  return xs.numpy()


def _our_chain(sched, x, key=None):
  def body(carry, i):
    x, state = carry
    eps = jax.pure_callback(lambda k, x: _fake_eps(int(k), np.asarray(x)),
                            jax.ShapeDtypeStruct(x.shape, jnp.float32), i, x)
    k = None if key is None else jax.random.fold_in(key, i)
    x, state = sched.step(state, i, eps, x, key=k)
    return (x, state), None
  x = jnp.asarray(x)
  (x, _), _ = jax.jit(lambda x: jax.lax.scan(body, (x, sched.init_state(x)),
                                             jnp.arange(sched.num_calls)))(x)
  return np.asarray(x)


def _rel(a, b):
  return np.abs(a - b).max() / np.abs(b).max()


CONFIGS = [
    ("pbe", PBE, 3),
    ("pbe", PBE, 7),
    ("linear_trailing", dict(PBE, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                             timestep_spacing="trailing", steps_offset=0), 5),
    ("linspace_one", dict(PBE, timestep_spacing="linspace", set_alpha_to_one=True), 4),
    ("leading_1step", PBE, 1),
    ("leading_2step", dict(PBE, num_train_timesteps=500), 2),
]


@pytest.mark.parametrize("name,cfg,n", CONFIGS)
def test_pndm_matches_diffusers(name, cfg, n):
  ref = diffusers.PNDMScheduler.from_config(cfg)
  ref.set_timesteps(n)
  ours = ls.make_scheduler(cfg, n, kind="pndm")
  np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
  assert ours.num_calls == (n + 1 if n > 1 else 1)
  x = np.random.default_rng(0).standard_normal((2, 4, 4, 3)).astype(np.float32)
  assert _rel(_our_chain(ours, x), _diffusers_chain(ref, x)) < 1e-5, name


@pytest.mark.parametrize("name,cfg,n", CONFIGS[:4] + [
    ("clip", dict(PBE, clip_sample=True, clip_sample_range=0.5), 4)])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_matches_diffusers(name, cfg, n, eta):
  cfg = dict(cfg, _class_name="DDIMScheduler")
  cfg.setdefault("clip_sample", False)
  ref = diffusers.DDIMScheduler.from_config(cfg)
  ref.set_timesteps(n)
  ours = ls.make_scheduler(cfg, n, eta=eta)
  np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
  x = np.random.default_rng(1).standard_normal((2, 4, 4, 3)).astype(np.float32)
  key = jax.random.key(3)
  noises = [np.asarray(jax.random.normal(jax.random.fold_in(key, i), x.shape, jnp.float32))
            for i in range(n)]
  got = _our_chain(ours, x, key=key if eta else None)
  want = _diffusers_chain(ref, x, eta=eta, noises=noises)
  assert _rel(got, want) < 1e-5, name


def test_ddim_from_pndm_config_takes_ddim_defaults():
  # diffusers' DDIMScheduler.from_config(pndm config): clip_sample defaults to True.
  ref = diffusers.DDIMScheduler.from_config(PBE)
  ours = ls.SchedulerConfig.from_dict(PBE, "ddim")
  assert ours.clip_sample == ref.config.clip_sample
  assert ours.set_alpha_to_one == ref.config.set_alpha_to_one


def test_alphas_cumprod_table():
  for cfg in (PBE, dict(PBE, beta_schedule="linear"),
              dict(PBE, beta_schedule="squaredcos_cap_v2")):
    ref = diffusers.PNDMScheduler.from_config(cfg).alphas_cumprod.numpy()
    np.testing.assert_allclose(ls.alphas_cumprod(ls.SchedulerConfig.from_dict(cfg)), ref,
                               rtol=2e-6)


@pytest.mark.parametrize("bad,match", [
    (dict(prediction_type="v_prediction"), "prediction_type"),
    (dict(skip_prk_steps=False), "skip_prk_steps"),
    (dict(timestep_spacing="karras"), "timestep_spacing"),
    (dict(beta_schedule="sigmoid"), "beta_schedule"),
])
def test_refused_settings_are_one_line(bad, match):
  with pytest.raises(ValueError, match=match) as e:
    ls.make_scheduler(dict(PBE, **bad), 10)
  assert "\n" not in str(e.value)


def test_pndm_refuses_eta_and_ddim_eta_needs_key():
  with pytest.raises(ValueError, match="eta"):
    ls.make_scheduler(PBE, 5, eta=0.5)
  s = ls.make_scheduler(PBE, 5, kind="ddim", eta=0.5)
  x = jnp.zeros((1, 2, 2, 4))
  with pytest.raises(ValueError, match="key"):
    s.step((), 0, x, x)
