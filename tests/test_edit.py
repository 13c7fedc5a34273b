"""SDEdit and masked editing (issue 7): t0 mapping, limits, exact keep region, errors."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from conftest import load_config
from scdm_jax import recipe
from scdm_jax.diffusion import sdedit
from scdm_jax.inference.editor import Editor
from scdm_jax.io import images as image_io
from scdm_jax.modes import edit
from scdm_jax.tools import strokes
from scdm_jax.diffusion import label_diffusion as ld
from scdm_jax.diffusion.gaussian import GaussianDiffusion
from scdm_jax.models.unet import UNet

K = 3
SCHED = ld.LabelSchedule.create("classwise", np.array([0.5, 30.0, 900.0]), 1000)
D100 = GaussianDiffusion.create("linear", 1000, "100")
D20 = GaussianDiffusion.create("linear", 1000, "20")
MU, S = -0.3, 0.3  # the toy data distribution N(MU, S^2) per pixel


def rkey(seed):
  # "rbg" keys: threefry programs take seconds to compile on small CPUs.
  return jax.random.key(seed, impl="rbg")


def oracle_apply(x, t, c):
  """Exact eps prediction E[eps | x_t] for data N(MU, S^2) (3 channels: fixed variance)."""
  a = AC_LINEAR[t][:, None, None, None]
  return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * MU) / (a * S * S + 1 - a) + 0.0 * c[..., :1]


AC_LINEAR = jnp.asarray(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), jnp.float32)


def cond_model(x, t, c):
  """Depends on the conditioning, so the null label is visible in the output."""
  s = jnp.sum(c * jnp.arange(1, c.shape[-1] + 1, dtype=jnp.float32), -1, keepdims=True)
  return 0.3 * x + 0.2 * s + 0.0 * t[:, None, None, None]


@functools.lru_cache(maxsize=None)
def _program(k0, diffusion, repeats, masked, progress):
  def run(g, cond, mask, key):
    return sdedit.sdedit(oracle_apply, diffusion, SCHED, g, cond, key, start_index=k0,
                         num_label_channels=K, mask=mask if masked else None,
                         repeats=repeats, progress=progress)
  return jax.jit(run)


def run_sdedit(guide, t0, seed=0, diffusion=D20, repeats=1, mask=None, progress=None):
  b, h, w, _ = guide.shape
  cond = np.zeros((b, h, w, K), np.float32)
  k0 = sdedit.start_index_for(diffusion, t0=t0)
  f = _program(k0, diffusion, repeats, mask is not None, progress)
  m = np.zeros((b, h, w, 1), np.float32) if mask is None else mask
  return np.asarray(f(guide, cond, m, rkey(seed)))


# ---------------------------------------------------------------- t0 <-> alpha-bar

def test_t0_mapping_linear_full_chain():
  full = GaussianDiffusion.create("linear", 1000, None)
  assert sdedit.start_index_for(full, t0=0.5) in (499, 500)
  assert sdedit.start_index_for(full, t0=1.0) == 999
  assert sdedit.start_index_for(full, t0=1e-6) == 0
  # the table of the spec (A.5)
  for t0, ab in [(0.3, 0.396), (0.4, 0.195), (0.5, 0.079), (0.6, 0.026)]:
    assert abs(sdedit.alpha_bar_for_t0(t0) - ab) < 2e-3, t0
  ac = full.table("alphas_cumprod")
  assert sdedit.alpha_bar_for_t0(0.5) == pytest.approx(ac[499], rel=1e-12)
  assert sdedit.alpha_bar_for_t0(1e-9) == pytest.approx(1.0, abs=1e-9)
  # explicit alpha-bar overrides t0
  assert sdedit.start_index_for(full, t0=0.9, alpha_bar=ac[299]) == 299


@pytest.mark.parametrize("schedule,respacing", [("cosine", None), ("cosine", "ddim25"),
                                                ("linear", "ddim25"), ("linear", "50")])
def test_t0_mapping_picks_nearest_alpha_bar(schedule, respacing):
  d = GaussianDiffusion.create(schedule, 1000, respacing)
  ac = d.table("alphas_cumprod")
  for t0 in (0.05, 0.3, 0.5, 0.6, 0.9, 1.0):
    target = sdedit.alpha_bar_for_t0(t0)
    k = sdedit.start_index_for(d, t0=t0)
    assert np.abs(ac[k] - target) == np.min(np.abs(ac - target))
  if schedule == "cosine" and respacing is None:
    # same alpha-bar, much later index than on the linear chain (spec table: t ~ 0.82)
    assert 800 <= sdedit.start_index_for(d, t0=0.5) <= 840


@pytest.mark.parametrize("kw", [dict(t0=0.0), dict(t0=1.5), dict(t0=None),
                                dict(t0=0.5, alpha_bar=1.0)])
def test_t0_errors(kw):
  with pytest.raises(ValueError, match="t0|alpha_bar"):
    sdedit.start_index_for(D100, **kw)


# ---------------------------------------------------------------- the limits (analytic model)

GUIDE = np.full((16, 8, 8, 3), 0.8, np.float32)
GUIDE[:, :4] = -0.9  # a two-colour "stroke" guide, far from the data mean


def test_output_approaches_guide_as_t0_shrinks_and_l2_grows_with_t0():
  outs = {t0: run_sdedit(GUIDE, t0, seed=3) for t0 in (1e-4, 0.3, 0.6, 1.0)}
  tiny = outs[1e-4]
  assert tiny.shape == GUIDE.shape and tiny.dtype == np.float32
  assert np.max(np.abs(tiny - GUIDE)) < 0.08  # t0 -> 0 returns the guide
  assert np.mean(np.abs(tiny - GUIDE)) < 0.015
  l2 = [float(np.mean((o - GUIDE) ** 2)) for o in outs.values()]
  assert all(a < b for a, b in zip(l2, l2[1:])), l2  # the Prop. 1 trend
  # t0 = 1 forgets the guide: the samples look like the data N(MU, S^2)
  # (fixed "large" variance on a 20-step chain: a little too much spread)
  assert abs(outs[1.0].mean() - MU) < 0.05 and abs(outs[1.0].std() - S) < 0.1


def test_same_seed_same_output_and_progress():
  calls = []
  record = lambda s, t: calls.append((s, t))
  a = run_sdedit(GUIDE, 0.4, seed=7, repeats=2, progress=record)
  b = run_sdedit(GUIDE, 0.4, seed=7, repeats=2)
  c = run_sdedit(GUIDE, 0.4, seed=8, repeats=2)
  # The progress callback is a side effect XLA must order; newer XLA (jax 0.12) fuses the
  # chain differently around it, so reporting is equal to float32 rounding, not bit for bit.
  np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  assert not np.allclose(a, c)
  total = 2 * (sdedit.start_index_for(D20, t0=0.4) + 1)
  steps = sorted({s for s, _ in calls})
  assert steps == list(range(1, total + 1)) and {t for _, t in calls} == {total}


def test_one_program_one_scan_per_repeat():
  f = _program(sdedit.start_index_for(D20, t0=0.5), D20, 3, True, None)
  g = np.zeros((2, 8, 8, 3), np.float32)
  text = f.lower(g, np.zeros((2, 8, 8, K), np.float32), np.ones((2, 8, 8, 1), np.float32),
                 rkey(0)).as_text()
  main = text[text.index("func.func public @main"):]
  main = main[:main.index("func.func", 10)] if "func.func" in main[10:] else main
  assert main.count("stablehlo.while") == 3  # K = 3 scans; no per-step unrolling


def test_masked_keeps_source_exactly_analytic():
  rng = np.random.default_rng(0)
  src = np.clip(rng.normal(size=GUIDE.shape), -1, 1).astype(np.float32)
  mask = np.zeros(GUIDE.shape[:3] + (1,), np.float32)
  mask[:, 2:6, 3:7] = 1
  out = run_sdedit(src, 0.6, mask=mask, repeats=2)
  keep = np.broadcast_to(mask == 0, out.shape)
  np.testing.assert_array_equal(out[keep], src[keep])
  assert not np.allclose(out[~keep], src[~keep])


# ---------------------------------------------------------------- Editor (batched, sharded)

def test_editor_null_label_is_the_all_zero_condition():
  d = GaussianDiffusion.create("linear", 1000, "ddim25")
  ed = Editor(cond_model, d, SCHED, num_classes=K, guidance_scale=2.0)
  guide = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 3)).astype(np.uint8)
  none = ed.sdedit(guide, label=None, t0=0.3, seed=rkey(1))
  assert ed.mesh.devices.size == 8  # 3 rows padded to 8, split over the 8 devices
  ed1 = Editor(cond_model, d, SCHED, num_classes=K, guidance_scale=1.0)
  unknown = ed1.sdedit(guide, label=np.full((3, 8, 8), -1, np.int32), t0=0.3, seed=rkey(1))
  np.testing.assert_array_equal(none, unknown)
  labelled = ed1.sdedit(guide, label=np.ones((8, 8), np.int32), t0=0.3, seed=rkey(1))
  assert none.shape == labelled.shape == (3, 8, 8, 3) and none.dtype == np.float32
  assert not np.allclose(none, labelled)
  two = ed1.sdedit(guide, label=np.ones((8, 8), np.int32), t0=0.3, seed=rkey(1),
                   num_samples=2)  # 6 rows: still padded to 8, the same program
  assert two.shape == (6, 8, 8, 3) and not np.allclose(two[0], two[1])


def tiny_unet_params(cfg, seed=0):
  """Random UNet params as a pure dict, made in numpy (initialising the UNet with jax
  compiles dozens of programs: minutes on a small shared CPU). Norm scales are 1, every
  other weight (the zero-initialised output conv too) N(0, 0.05^2)."""
  abstract = nnx.state(nnx.eval_shape(lambda: UNet(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  rng = np.random.default_rng(seed)

  def fill(path, x):
    if str(getattr(path[-1], "key", path[-1])) == "scale":
      return np.ones(x.shape, np.float32)
    return (0.05 * rng.standard_normal(x.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(abstract))


# ---------------------------------------------------------------- masks and errors

def test_mask_formats(tmp_path):
  m = np.zeros((6, 5), np.uint8)
  m[1:3, 2:4] = 1
  want = m.astype(np.float32)
  np.testing.assert_array_equal(image_io.load_mask(m), want)
  np.testing.assert_array_equal(image_io.load_mask(m * 255), want)
  np.testing.assert_array_equal(image_io.load_mask(m.astype(bool)), want)
  np.testing.assert_array_equal(image_io.load_mask(m[..., None].astype(np.float32)), want)
  for mode, arr in [("L", m * 255), ("L", m), ("1", m * 255)]:
    p = str(tmp_path / f"m_{mode}_{arr.max()}.png")
    Image.fromarray(arr).convert(mode).save(p)
    np.testing.assert_array_equal(image_io.load_mask(p), want)
  p = str(tmp_path / "rgb.png")
  Image.fromarray(np.repeat((m * 255)[..., None], 3, -1)).save(p)
  np.testing.assert_array_equal(image_io.load_mask(p), want)


def test_mask_errors(tmp_path):
  bad = np.zeros((6, 5), np.uint8)
  bad[0, 0], bad[1, 1] = 128, 255
  p = str(tmp_path / "soft_mask.png")
  Image.fromarray(bad).save(p)
  with pytest.raises(ValueError, match=r"soft_mask\.png.*found 0, 128, 255"):
    image_io.load_mask(p)
  with pytest.raises(ValueError, match=r"<mask array>.*found 0, 0.5, 1"):
    image_io.load_mask(np.array([[0, 0.5], [1, 1]]))
  with pytest.raises(ValueError, match="found 0, 1, 255"):
    image_io.load_mask(np.array([[0, 1], [255, 1]]))
  col = np.zeros((4, 4, 3), np.uint8)
  col[0, 0] = (255, 0, 0)
  Image.fromarray(col).save(str(tmp_path / "c.png"))
  with pytest.raises(ValueError, match=r"c\.png.*colour"):
    image_io.load_mask(str(tmp_path / "c.png"))


def test_size_and_range_errors():
  ed = Editor(cond_model, D100, SCHED, num_classes=K)
  src = np.zeros((1, 16, 16, 3), np.uint8)
  with pytest.raises(ValueError, match=r"source is 16x16.*mask is 8x8"):
    ed.masked_edit(src, np.zeros((8, 8), np.uint8))
  with pytest.raises(ValueError, match=r"image is 16x16.*label is 16x12"):
    ed.sdedit(src, label=np.zeros((16, 12), np.int32))
  with pytest.raises(ValueError, match=r"source is 16x16.*strokes is 16x8"):
    ed.masked_edit(src, np.zeros((16, 16), np.uint8), strokes=np.zeros((16, 8, 3), np.uint8))
  with pytest.raises(ValueError, match=r"guide.*\[-1, 1\]"):
    ed.sdedit(np.full((1, 16, 16, 3), 3.0, np.float32))
  with pytest.raises(ValueError, match="label ids outside"):
    ed.sdedit(src, label=np.full((16, 16), K, np.int32))


# ---------------------------------------------------------------- strokes

def test_stroke_simulator(tmp_path):
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
  s = strokes.simulate_strokes(img, colors=4)
  assert s.shape == img.shape and s.dtype == np.uint8
  assert len(np.unique(s.reshape(-1, 3), axis=0)) <= 4
  f = strokes.simulate_strokes(img.astype(np.float32) / 127.5 - 1, colors=4)
  assert f.dtype == np.float32 and f.min() >= -1 and f.max() <= 1
  assert strokes.stroke_kernel(64) == 7 and strokes.stroke_kernel(32) == 3
  assert strokes.stroke_kernel(256) == 23
  ids = np.zeros((32, 32), np.int32)
  ids[:, 16:] = 1
  sk = strokes.label_color_sketch(ids, img)
  assert len(np.unique(sk.reshape(-1, 3), axis=0)) == 2
  out = str(tmp_path / "m.png")
  assert strokes.main(["box-mask", out, "--size", "16", "--box", "2,3,10,12"]) == 0
  m = image_io.load_mask(out)
  assert m.sum() == 8 * 9 and m[3, 2] == 1 and m[12, 10] == 0
  Image.fromarray(img).save(str(tmp_path / "i.png"))
  assert strokes.main(["strokes", str(tmp_path / "i.png"), str(tmp_path / "s.png")]) == 0
  assert image_io.load_image(str(tmp_path / "s.png")).shape == (32, 32, 3)


def test_dilate_mask():
  m = np.zeros((2, 7, 7), np.float32)
  m[0, 3, 3] = 1
  d = image_io.dilate_mask(m, 1)
  assert d[0].sum() == 9 and d[0, 2:5, 2:5].all() and d[1].sum() == 0
  assert image_io.dilate_mask(m, 2)[0].sum() == 25


# ---------------------------------------------------------------- --mode edit end to end

def test_run_edit_masked_end_to_end(tmp_path):
  from scdm_jax import checkpointing
  from scdm_jax.data import label_io
  config = load_config("tiny")
  config.diffusion.label_schedule = "uniform"  # no psi statistics needed
  params = tiny_unet_params(recipe.unet_config(config))
  export = str(tmp_path / "export")
  checkpointing.save_export(export, params, json.loads(json.dumps(
      recipe.run_meta(config, None))))

  rng = np.random.default_rng(0)
  src = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
  Image.fromarray(src).save(str(tmp_path / "img.png"))
  mask = np.zeros((16, 16), np.uint8)
  mask[5:11, 4:9] = 255
  Image.fromarray(mask).save(str(tmp_path / "mask.png"))
  label_io.save_label_png(str(tmp_path / "lab.png"), rng.integers(0, 9, (16, 16)))
  config.sample.checkpoint = export
  config.edit.update(dict(
      guide=str(tmp_path / "img.png"), mask=str(tmp_path / "mask.png"),
      label=str(tmp_path / "lab.png"), t0=1.0, respacing="5", dilate=1, num_samples=2,
      output_dir=str(tmp_path / "out")))
  res = edit.run(config, str(tmp_path))
  assert res["count"] == 1 and res["masked"] and res["start_index"] == 4
  used = image_io.load_mask(str(tmp_path / "out" / "masks" / "img.png"))
  np.testing.assert_array_equal(used, image_io.dilate_mask(mask / 255, 1))
  keep = used == 0
  outs = [np.asarray(Image.open(str(tmp_path / "out" / f"sample_{j}" / "img.png")))
          for j in (0, 1)]
  for got in outs:
    assert got.shape == (16, 16, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[keep], src[keep])  # bit for bit
    assert np.abs(got[~keep].astype(int) - src[~keep]).mean() > 10  # regenerated
  assert not np.array_equal(outs[0], outs[1])  # two samples, different noise

  # a label map of another size is refused, naming both files and sizes
  label_io.save_label_png(str(tmp_path / "small.png"), np.zeros((8, 8), np.int32))
  config.edit.label = str(tmp_path / "small.png")
  with pytest.raises(ValueError, match=r"img\.png is 16x16.*small\.png is 8x8"):
    edit.run(config, str(tmp_path))


def test_relabel_cli(tmp_path):
  from scdm_jax.data import label_io
  ids = np.zeros((8, 8), np.int32)
  ids[:, 4:] = 2
  label_io.save_label_png(str(tmp_path / "l.png"), ids)
  Image.fromarray(strokes.box_mask(8, (0, 0, 2, 3))).save(str(tmp_path / "m.png"))
  assert strokes.main(["relabel", str(tmp_path / "l.png"), str(tmp_path / "m.png"),
                       str(tmp_path / "o.png"), "--to", "water"]) == 0
  got, rep = label_io.load_label_map(str(tmp_path / "o.png"), num_classes=9,
                                     palette="procedural")
  want = ids.copy()
  want[:3, :2] = 3  # water
  assert rep.mode == "palette"
  np.testing.assert_array_equal(got, want)
