"""AlexNet-LPIPS and the diversity score (random weights of the right shapes)."""

import itertools

import jax
import numpy as np
import pytest

from scdm_jax.evaluation import lpips


def _random_weights(seed=0):
  rng = np.random.default_rng(seed)
  arrays = {}
  for k, shape in lpips.lpips_weight_shapes().items():
    if k.startswith("lin"):
      arrays[k] = rng.uniform(0, 0.1, shape).astype(np.float32)
    elif k.endswith("weight"):
      arrays[k] = (rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[1:]))).astype(
          np.float32)
    else:
      arrays[k] = (0.05 * rng.standard_normal(shape)).astype(np.float32)
  return arrays


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("lpips") / "lpips_alex.npz"
  np.savez(path, **_random_weights())
  return path


@pytest.fixture(scope="module")
def model(weights_file):
  return lpips.load_lpips(weights_file)


def test_layout():
  shapes = lpips.lpips_weight_shapes()
  assert len(shapes) == 15
  # torchvision alexnet.features has 2,469,696 parameters; the LPIPS heads 64+192+384+256+256.
  assert sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith("features")) == 2_469_696
  assert sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith("lin")) == 1152


def test_distance_properties(model):
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (3, 64, 64, 3)).astype(np.float32)
  y = np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
  z = rng.uniform(-1, 1, (3, 64, 64, 3)).astype(np.float32)
  dxy, dyx = np.asarray(model(x, y)), np.asarray(model(y, x))
  assert dxy.shape == (3,)
  np.testing.assert_allclose(dxy, dyx, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(model(x, x)), 0.0)
  assert np.all(dxy > 0)
  assert np.all(np.asarray(model(x, z)) > dxy)  # unrelated images are farther than noisy copies
  with pytest.raises(ValueError, match="must both be"):
    model(x, y[:2])
  with pytest.raises(ValueError, match="at least 31x31"):
    model(x[:, :16, :16], y[:, :16, :16])


def test_diversity_is_mean_over_45_pairs(model):
  rng = np.random.default_rng(1)
  samples = rng.uniform(-1, 1, (10, 3, 32, 32, 3)).astype(np.float32)
  r = lpips.diversity(model, samples, batch_size=2)
  assert r["num_pairs"] == 45 and r["num_sets"] == 10 and r["num_maps"] == 3
  i, j = np.array(list(itertools.combinations(range(10), 2))).T
  dist = jax.jit(lambda a, b: model(a, b))  # one batched call instead of 45 eager ones
  pair_means = np.asarray(dist(samples[i].reshape(-1, 32, 32, 3),
                               samples[j].reshape(-1, 32, 32, 3))).reshape(45, 3)
  np.testing.assert_allclose(r["per_map"], np.mean(pair_means, axis=0), rtol=1e-5)
  assert r["lpips_diversity"] == pytest.approx(float(np.mean(pair_means)), rel=1e-5)
  same = lpips.diversity(model, np.repeat(samples[:1, :1], 2, axis=0))
  assert same["lpips_diversity"] == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(ValueError, match="at least 2 sample sets"):
    lpips.diversity(model, samples[:1])


def test_stargan_variant(weights_file):
  m = lpips.load_lpips(weights_file, variant="stargan_v2")
  rng = np.random.default_rng(2)
  x = rng.uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
  y = rng.uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
  d = np.asarray(m(x, y))
  assert d.shape == (1,) and d[0] > 0 and np.asarray(m(x, x))[0] == 0
  with pytest.raises(ValueError, match="variant"):
    lpips.load_lpips(weights_file, variant="vgg")


@pytest.mark.parametrize("case", ["missing_file", "not_npz", "missing_key", "wrong_shape"])
def test_bad_weights_are_refused(tmp_path, case):
  path = tmp_path / "bad_lpips.npz"
  exc, match = ValueError, "bad_lpips.npz"
  arrays = _random_weights(1)
  if case == "missing_file":
    exc = FileNotFoundError
  elif case == "not_npz":
    path.write_text("not an archive")
  elif case == "missing_key":
    del arrays["lin3.model.1.weight"]
    match = "bad_lpips.npz.*lin3.model.1.weight"
    np.savez(path, **arrays)
  elif case == "wrong_shape":
    arrays["features.3.weight"] = np.zeros((192, 64, 3, 3), np.float32)
    match = r"bad_lpips.npz: key 'features.3.weight' has shape \(192, 64, 3, 3\)"
    np.savez(path, **arrays)
  with pytest.raises(exc, match=match):
    lpips.load_lpips(path)


def test_convert_from_torch(tmp_path):
  torch = pytest.importorskip("torch")
  from scdm_jax.evaluation import convert_lpips  # pylint: disable=import-outside-toplevel
  arrays = _random_weights(3)
  alex = {k: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("features")}
  alex["classifier.1.weight"] = torch.zeros(4096, 9216)
  lin = {k: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("lin")}
  torch.save(alex, tmp_path / "alexnet.pth")
  torch.save(lin, tmp_path / "alex.pth")
  out = tmp_path / "lpips.npz"
  assert convert_lpips.main(["--alexnet", str(tmp_path / "alexnet.pth"), "--lin",
                             str(tmp_path / "alex.pth"), "--out", str(out)]) == 0
  with np.load(out) as data:
    assert set(data.files) == set(arrays)
    np.testing.assert_array_equal(data["lin4.model.1.weight"], arrays["lin4.model.1.weight"])
  with pytest.raises(ValueError, match="missing"):
    convert_lpips.convert(None, str(tmp_path / "alex.pth"), str(tmp_path / "x.npz"))
