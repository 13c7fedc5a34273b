"""Noisy-label benchmark ops: fixture parity, Pillow's NEAREST rule, Edge and Random."""

import numpy as np
import pytest
from PIL import Image

from scdm_jax import parity
from scdm_jax.data import noisy
from scdm_jax.parity import __main__ as parity_main
from scdm_jax.parity import noisy_benchmark


def _pil_resize(x, size_hw):
  return np.asarray(Image.fromarray(x).resize(size_hw[::-1], Image.NEAREST))


def test_fixture_parity_exact(fixtures_dir):
  kind, results = parity.check_file(str(fixtures_dir / "noisy_benchmark.npz"))
  assert kind == "noisy_benchmark"
  assert len(results) == 12  # 3 examples x (ds64, ds64_up256, raw256, edge)
  for r in results:
    assert r.exact and r.ok, r


def test_parity_cli(fixtures_dir, capsys):
  assert parity_main.main([str(fixtures_dir / "noisy_benchmark.npz")]) == 0
  assert "edge_2" in capsys.readouterr().out


def _brute_edge(raw, unl=0, radius=2):
  h, w = raw.shape
  b = np.zeros((h, w), bool)
  for y in range(h):
    for x in range(w):
      for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        yy, xx = y + dy, x + dx
        if 0 <= yy < h and 0 <= xx < w and raw[yy, xx] != raw[y, x]:
          b[y, x] = True
  d = np.zeros_like(b)
  for y, x in zip(*np.nonzero(b)):
    for yy in range(max(0, y - radius), min(h, y + radius + 1)):
      for xx in range(max(0, x - radius), min(w, x + radius + 1)):
        if abs(yy - y) + abs(xx - x) <= radius:
          d[yy, xx] = True
  out = raw.copy()
  out[d] = unl
  return out


def test_parity_any_file_of_the_schema(tmp_path):
  """Another file of the same schema (other sizes, 2 examples) built with Pillow + brute force."""
  rng = np.random.default_rng(3)
  data = {}
  for i, (h, w) in enumerate([(97, 131), (40, 33)]):
    raw = np.repeat(np.repeat(rng.integers(1, 151, (h // 7 + 1, w // 5 + 1)), 7, 0), 5, 1)
    raw = raw[:h, :w].astype(np.uint8)
    data[f"raw_{i}"] = raw
    data[f"ds64_{i}"] = _pil_resize(raw, (64, 64))
    data[f"ds64_up256_{i}"] = _pil_resize(data[f"ds64_{i}"], (80, 80))
    data[f"raw256_{i}"] = _pil_resize(raw, (80, 80))
    data[f"edge_{i}"] = _brute_edge(data[f"raw256_{i}"])
  path = tmp_path / "nb.npz"
  np.savez(path, **data)
  kind, results = parity.check_file(str(path))
  assert kind == "noisy_benchmark" and len(results) == 8
  assert all(r.ok for r in results), [r for r in results if not r.ok]
  # A wrong reference is caught.
  data["edge_1"] = data["edge_1"].copy()
  data["edge_1"][0, 0] ^= 1
  assert not all(r.ok for r in noisy_benchmark.check(data))


@pytest.mark.parametrize("n", [1, 2, 4, 6, 8, 12, 37, 183, 300, 517, 1024])
def test_nearest_indices_match_pillow(n):
  src = np.arange(n, dtype=np.int32)[None, :]
  for m in (1, 3, 7, 64, 100, 255, 256, 257, 333):
    got = noisy.pil_nearest_indices(n, m)
    ref = np.asarray(Image.fromarray(src, mode="I").resize((m, 1), Image.NEAREST))[0]
    np.testing.assert_array_equal(got, ref, err_msg=f"{n}->{m}")


def test_resize_nearest_2d_matches_pillow():
  rng = np.random.default_rng(0)
  for _ in range(20):
    h, w = rng.integers(1, 400, 2)
    oh, ow = rng.integers(1, 300, 2)
    x = rng.integers(0, 256, (h, w), dtype=np.uint8)
    np.testing.assert_array_equal(noisy.resize_nearest(x, (int(oh), int(ow))),
                                  _pil_resize(x, (int(oh), int(ow))))


def test_boundary_rule_and_diamond():
  inst = np.zeros((6, 7), np.int32)
  inst[:, 4:] = 5
  b = noisy.boundary_map(inst)
  expect = np.zeros_like(b)
  expect[:, 3:5] = True  # both sides of the boundary: 2 px thick
  np.testing.assert_array_equal(b, expect)
  assert not noisy.boundary_map(np.ones((4, 4))).any()  # image borders are not boundaries
  m = np.zeros((9, 9), bool)
  m[4, 4] = True
  d = noisy.dilate_l1(m, 2)
  assert d.sum() == 13
  yy, xx = np.nonzero(d)
  assert (np.abs(yy - 4) + np.abs(xx - 4)).max() == 2
  corner = np.zeros((5, 5), bool)
  corner[0, 0] = True
  assert noisy.dilate_l1(corner, 2).sum() == 6  # clipped at the border, no wrap


def test_edge_uses_instance_when_given():
  label = np.full((10, 10), 7, np.uint8)
  inst = np.zeros((10, 10), np.int32)
  inst[:, 5:] = 1  # two instances of the same class
  assert (noisy.corrupt_edge(label, 0) == 7).all()  # no class boundary
  out = noisy.corrupt_edge(label, 0, instance=inst)
  assert (out[:, 2:8] == 0).all() and (out[:, :2] == 7).all() and (out[:, 8:] == 7).all()


def test_random_rate_and_reproducibility():
  label = np.ones((1000, 1000), np.uint8)
  a = noisy.corrupt_random(label, 0, np.random.default_rng(123))
  rate = (a == 0).mean()
  assert abs(rate - 0.1) <= 0.005, rate
  b = noisy.corrupt_random(label, 0, np.random.default_rng(123))
  np.testing.assert_array_equal(a, b)
  c = noisy.corrupt_random(label, 0, 124)
  assert (a != c).any()
  assert (label == 1).all()  # input untouched


def test_ds_shapes():
  raw = np.arange(300 * 400, dtype=np.int64).reshape(300, 400) % 151
  assert noisy.corrupt_ds(raw).shape == (64, 64)
  assert noisy.corrupt_ds(raw, (256, 256)).shape == (256, 256)
