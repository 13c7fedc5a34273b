"""Fréchet distance (FID), KID and cached reference statistics.

All statistics are computed in float64 with numpy: the Fréchet distance of two 2048-d
Gaussians subtracts quantities of order 1e2..1e3 to obtain values of order 1..10, so float32
round-off would show in the reported digits.

Matrix square root. pytorch-fid computes ``tr(sqrtm(sigma1 @ sigma2))`` with
``scipy.linalg.sqrtm`` on the (non-symmetric) product and drops a small imaginary part. We use
the identity ``tr(sqrt(S1 S2)) = tr(sqrt(A S2 A))`` with ``A = sqrt(S1)`` (``S1 S2`` is similar to
the symmetric PSD matrix ``A S2 A``), and evaluate both square roots with symmetric
eigendecompositions (``numpy.linalg.eigh``), clipping eigenvalues that round-off made slightly
negative to zero. The result is always real, needs no scipy, and agrees with the scipy route to
round-off on well-conditioned inputs (tests check this when scipy is installed). On singular
covariances (fewer samples than dimensions) it stays finite without pytorch-fid's ``eps * I``
fallback.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

from scdm_jax.io import atomic
from scdm_jax.evaluation import _npz

__all__ = [
    "compute_statistics", "StatsAccumulator", "frechet_distance", "fid_from_features",
    "kernel_inception_distance", "save_stats", "load_stats",
]


def _as_features(features: Any, name: str = "features") -> np.ndarray:
  f = np.asarray(features, dtype=np.float64)
  if f.ndim != 2:
    raise ValueError(f"{name} must be a 2-D array (num_samples, dim); got shape {f.shape}.")
  if not np.all(np.isfinite(f)):
    raise ValueError(f"{name} contains NaN or Inf values.")
  return f


def compute_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance (float64, ``ddof=1`` as pytorch-fid) of ``(N, D)`` features."""
  f = _as_features(features)
  if f.shape[0] < 2:
    raise ValueError(f"Need at least 2 feature vectors for a covariance; got {f.shape[0]}.")
  mu = f.mean(axis=0)
  sigma = np.cov(f, rowvar=False)
  return mu, np.atleast_2d(sigma)


class StatsAccumulator:
  """Streaming mean/covariance over feature batches (float64, shifted sums).

  Sums are taken around the first batch's mean (a fixed shift), which avoids the catastrophic
  cancellation of the textbook ``E[xx^T] - mu mu^T`` when features have a large common offset.
  ``result()`` equals ``compute_statistics(concatenate(batches))`` to round-off.
  """

  def __init__(self):
    self.count = 0
    self._shift = None
    self._sum = None
    self._outer = None

  def update(self, features: Any) -> None:
    f = _as_features(features)
    if f.shape[0] == 0:
      return
    if self._shift is None:
      self._shift = f.mean(axis=0)
      self._sum = np.zeros_like(self._shift)
      self._outer = np.zeros((f.shape[1], f.shape[1]), np.float64)
    elif f.shape[1] != self._shift.shape[0]:
      raise ValueError(
          f"Feature dimension changed: {f.shape[1]} vs {self._shift.shape[0]} before.")
    d = f - self._shift
    self._sum += d.sum(axis=0)
    self._outer += d.T @ d
    self.count += f.shape[0]

  def result(self) -> tuple[np.ndarray, np.ndarray]:
    if self.count < 2:
      raise ValueError(f"Need at least 2 feature vectors for a covariance; got {self.count}.")
    n = self.count
    mean_d = self._sum / n
    sigma = (self._outer - n * np.outer(mean_d, mean_d)) / (n - 1)
    sigma = 0.5 * (sigma + sigma.T)
    return self._shift + mean_d, sigma


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
  """Symmetric PSD square root via eigh; round-off negative eigenvalues are clipped to 0."""
  m = 0.5 * (m + m.T)
  w, v = np.linalg.eigh(m)
  w = np.sqrt(np.clip(w, 0.0, None))
  return (v * w) @ v.T


def _check_stats(mu, sigma, name):
  mu = np.asarray(mu, np.float64)
  sigma = np.asarray(sigma, np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(
        f"{name}: expected mu of shape (D,) and sigma of shape (D, D); got {mu.shape} and "
        f"{sigma.shape}.")
  if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
    raise ValueError(f"{name}: statistics contain NaN or Inf values.")
  return mu, sigma


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

  ``||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrt(sigma1 sigma2))``, with the trace term
  computed as ``sum(sqrt(eig(sqrt(sigma1) sigma2 sqrt(sigma1))))`` (see the module docstring).
  """
  mu1, sigma1 = _check_stats(mu1, sigma1, "first statistics")
  mu2, sigma2 = _check_stats(mu2, sigma2, "second statistics")
  if mu1.shape != mu2.shape:
    raise ValueError(f"Statistics have different dimensions: {mu1.shape[0]} vs {mu2.shape[0]}.")
  diff = mu1 - mu2
  a = _sqrt_psd(sigma1)
  m = a @ sigma2 @ a
  eig = np.linalg.eigvalsh(0.5 * (m + m.T))
  tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
  fd = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
  # Exactly-equal inputs can give -1e-12 from round-off; a distance is never negative.
  return float(max(fd, 0.0))


def fid_from_features(features1: Any, features2: Any) -> float:
  """FID between two ``(N, D)`` feature sets."""
  return frechet_distance(*compute_statistics(features1), *compute_statistics(features2))


def kernel_inception_distance(features1: Any, features2: Any, *, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> dict[str, float]:
  """KID: unbiased MMD^2 with the kernel ``k(x, y) = (x.y / D + 1)^3`` (Bińkowski et al. 2018).

  As in torch-fidelity/clean-fid, the estimate is averaged over ``num_subsets`` random subsets
  (without replacement) of ``m = min(subset_size, N1, N2)`` vectors from each set.

  Returns:
    ``{"kid_mean": ..., "kid_std": ..., "subset_size": m, "num_subsets": ...}``.
  """
  x_all = _as_features(features1, "features1")
  y_all = _as_features(features2, "features2")
  if x_all.shape[1] != y_all.shape[1]:
    raise ValueError(f"Feature dimensions differ: {x_all.shape[1]} vs {y_all.shape[1]}.")
  m = min(subset_size, x_all.shape[0], y_all.shape[0])
  if m < 2:
    raise ValueError(f"KID needs at least 2 samples per set; got subset size {m}.")
  if num_subsets < 1:
    raise ValueError(f"num_subsets must be >= 1; got {num_subsets}.")
  d = x_all.shape[1]
  rng = np.random.default_rng(seed)
  values = np.empty(num_subsets, np.float64)
  for s in range(num_subsets):
    x = x_all[rng.choice(x_all.shape[0], m, replace=False)]
    y = y_all[rng.choice(y_all.shape[0], m, replace=False)]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    values[s] = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2.0 * kxy.sum() / (m * m))
  return {"kid_mean": float(values.mean()), "kid_std": float(values.std()),
          "subset_size": int(m), "num_subsets": int(num_subsets)}


def save_stats(path: str | os.PathLike, mu: Any, sigma: Any, **meta: Any) -> None:
  """Writes reference statistics as npz (keys ``mu``, ``sigma`` as pytorch-fid) atomically.

  Extra keyword values (e.g. ``num_samples=2000``, ``resize_mode="bilinear"``) are stored as
  additional npz entries ``meta_<name>``.
  """
  mu, sigma = _check_stats(mu, sigma, f"save_stats({path})")
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = {"mu": mu, "sigma": sigma}
  arrays.update({f"meta_{k}": np.asarray(v) for k, v in meta.items()})
  atomic.write_npz(path, arrays)


def load_stats(path: str | os.PathLike, *, dim: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
  """Reads ``(mu, sigma)`` from an npz written by `save_stats` or by pytorch-fid.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: not an npz, missing ``mu``/``sigma``, inconsistent shapes, a dimension other
      than ``dim`` (if given), or non-finite values. The message names the file.
  """
  data = _npz.load_npz(path, "Reference statistics")
  missing = [k for k in ("mu", "sigma") if k not in data]
  if missing:
    raise ValueError(
        f"Reference statistics file {path} lacks key(s) {missing}; found {sorted(data)}. "
        "Expected an npz with 'mu' (D,) and 'sigma' (D, D), e.g. from save_stats().")
  mu, sigma = data["mu"], data["sigma"]
  mu, sigma = _check_stats(mu, sigma, f"Reference statistics file {path}")
  if dim is not None and mu.shape[0] != dim:
    raise ValueError(f"Reference statistics file {path} has dimension {mu.shape[0]}; "
                     f"expected {dim}.")
  return mu, sigma
