"""FID / KID / reference-statistics tests (pure numpy, fast)."""

import numpy as np
import pytest

from scdm_jax.evaluation import fid


def _gaussian(rng, n, mu, sd):
  return mu + rng.standard_normal((n, mu.shape[0])) * sd


def test_fid_of_a_set_against_itself_is_zero():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((500, 64)) @ rng.standard_normal((64, 64)) + 3.0
  assert fid.fid_from_features(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_closed_form_diagonal():
  # For diagonal covariances FD = |mu1 - mu2|^2 + sum (s1 - s2)^2 with s the std devs.
  rng = np.random.default_rng(1)
  d = 32
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  s1, s2 = rng.uniform(0.1, 2.0, d), rng.uniform(0.1, 2.0, d)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
  got = fid.frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2))
  assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_closed_form_commuting_full_covariances():
  # Same eigenvectors: sqrt(S1 S2) = Q diag(sqrt(l1 l2)) Q^T.
  rng = np.random.default_rng(2)
  q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
  l1, l2 = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
  s1, s2 = (q * l1) @ q.T, (q * l2) @ q.T
  mu = rng.standard_normal(16)
  expected = np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2)
  assert fid.frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-9)


def test_fid_from_gaussian_samples_approaches_closed_form():
  rng = np.random.default_rng(3)
  d = 8
  mu1, mu2 = np.zeros(d), np.full(d, 0.5)
  x, y = _gaussian(rng, 20000, mu1, 1.0), _gaussian(rng, 20000, mu2, 2.0)
  expected = d * 0.25 + d * (2.0 - 1.0) ** 2
  assert fid.fid_from_features(x, y) == pytest.approx(expected, rel=0.03)


def test_matches_scipy_sqrtm_route():
  scipy_linalg = pytest.importorskip("scipy.linalg")
  rng = np.random.default_rng(4)
  a, b = rng.standard_normal((300, 40)), rng.standard_normal((300, 40)) * 1.5 + 0.2
  mu1, s1 = fid.compute_statistics(a)
  mu2, s2 = fid.compute_statistics(b)
  covmean = scipy_linalg.sqrtm(s1 @ s2).real
  ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
  assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)


def test_singular_covariance_stays_finite_and_nonnegative():
  rng = np.random.default_rng(5)
  x = rng.standard_normal((10, 64))  # rank 9 < 64
  y = rng.standard_normal((10, 64))
  v = fid.fid_from_features(x, y)
  assert np.isfinite(v) and v >= 0


def test_streaming_statistics_match_batch():
  rng = np.random.default_rng(6)
  x = rng.standard_normal((257, 20)) * 3 + 1000.0  # large offset: cancellation-prone
  acc = fid.StatsAccumulator()
  for chunk in np.array_split(x, 5):
    acc.update(chunk)
  mu, sigma = acc.result()
  mu_ref, sigma_ref = fid.compute_statistics(x)
  np.testing.assert_allclose(mu, mu_ref, rtol=1e-12)
  np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-9, atol=1e-9)


def test_kid_near_zero_for_same_distribution_and_positive_otherwise():
  rng = np.random.default_rng(7)
  x, y = rng.standard_normal((600, 16)), rng.standard_normal((600, 16))
  same = fid.kernel_inception_distance(x, y, num_subsets=20, subset_size=300)
  assert abs(same["kid_mean"]) < 3 * same["kid_std"] + 1e-3
  other = fid.kernel_inception_distance(x, y + 1.0, num_subsets=20, subset_size=300)
  assert other["kid_mean"] > 10 * max(abs(same["kid_mean"]), 1e-4)
  assert same["subset_size"] == 300


def test_kid_is_unbiased_on_average():
  # The unbiased estimator averages to ~0 over many independent same-distribution draws.
  rng = np.random.default_rng(8)
  vals = [fid.kernel_inception_distance(rng.standard_normal((50, 4)),
                                        rng.standard_normal((50, 4)),
                                        num_subsets=1, subset_size=50)["kid_mean"]
          for _ in range(200)]
  assert abs(np.mean(vals)) < 3 * np.std(vals) / np.sqrt(len(vals))


def test_stats_roundtrip_and_meta(tmp_path):
  rng = np.random.default_rng(9)
  mu, sigma = fid.compute_statistics(rng.standard_normal((50, 6)))
  p = tmp_path / "sub" / "ref.npz"
  fid.save_stats(p, mu, sigma, num_samples=50, resize_mode="bilinear")
  mu2, sigma2 = fid.load_stats(p, dim=6)
  np.testing.assert_array_equal(mu, mu2)
  np.testing.assert_array_equal(sigma, sigma2)
  assert list(tmp_path.joinpath("sub").iterdir()) == [p]  # no temp file left behind


@pytest.mark.parametrize("case", ["missing", "not_npz", "no_sigma", "bad_shape", "nan", "dim"])
def test_load_stats_refuses_bad_files(tmp_path, case):
  p = tmp_path / "ref.npz"
  exc = ValueError
  if case == "missing":
    exc = FileNotFoundError
  elif case == "not_npz":
    p.write_bytes(b"this is not a zip file at all")
  elif case == "no_sigma":
    np.savez(p, mu=np.zeros(4))
  elif case == "bad_shape":
    np.savez(p, mu=np.zeros(4), sigma=np.eye(3))
  elif case == "nan":
    np.savez(p, mu=np.full(4, np.nan), sigma=np.eye(4))
  elif case == "dim":
    np.savez(p, mu=np.zeros(4), sigma=np.eye(4))
  with pytest.raises(exc, match="ref.npz"):
    fid.load_stats(p, dim=2048 if case == "dim" else None)
