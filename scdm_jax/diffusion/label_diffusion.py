"""Label diffusion (scdm-method.md §2-3): absorbing-state masking with class-wise schedules.

A pixel of a one-hot label map keeps its class with the survival probability gamma_t of
that class and otherwise becomes the all-zero "unknown" vector (absorbing: all-zero pixels
stay all-zero). One uniform number u per pixel is shared by all K channels, and the keep
mask is floor(g + u) with g the pixel's survival probability (the reference's floor trick).

Precision: gamma is tabulated once in float64 NumPy for every original timestep 0..T (τ in
float32, ψ^τ = exp(τ log ψ) in float64, as the reference). The float64 comparison
floor(g + u) is turned into an exact float32 one: floor(g) + [u >= t32], where t32 is
1 - frac(g) rounded *up* to float32. Since u is float32, u >= t32 holds exactly when
u >= 1 - frac(g), so the masks equal the reference's float64 ones bit for bit, inside jit,
without x64.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("classwise", "uniform", "none")
LINEAR_PSI = 0.5  # the reference's "linear schedule" sentinel (any psi < 1 is linear)


def classwise_gamma(tau, psi) -> np.ndarray:
  """gamma^c(τ) = 1 - min(τ, (ψ^τ - 1) / (ψ - 1 + 1e-7)) in float64; shape (len(τ), K).

  Exactly the reference formula, including its quirk that ψ == 1 gives gamma == 1.
  """
  tau = np.asarray(tau, np.float64).reshape(-1, 1)
  psi = np.asarray(psi, np.float64).reshape(1, -1)
  powed = np.exp(tau * np.log(psi))
  return 1.0 - np.minimum(tau, (powed - 1.0) / (psi - 1.0 + 1e-7))


@dataclasses.dataclass(frozen=True, eq=False)
class LabelSchedule:
  """How fast each class is absorbed, as a function of the *original* timestep.

  Build with `LabelSchedule.create(...)`. Hashes by identity, so it can be a static
  argument of `jax.jit`; otherwise close over it.

  Attributes:
    kind: "classwise" (per-class ψ, the released SCDM models), "uniform" (every class
      gamma = 1 - τ) or "none" (no label diffusion: gamma == 1).
    psi: (K,) float64 per-class ψ for "classwise" (None otherwise).
    num_original_steps: T of the original (training) chain.
    reference_tau_1000: use the reference's hard-coded τ = t / 1000 instead of t / T. The
      two are equal when T = 1000. For T > 1000 the reference gives gamma < 0 and
      negative "one-hot" labels; this option reproduces even that (it is a bug).
    reference_uniform_off_by_one: for kind "uniform", use the reference's
      gamma_k = 1 - (k + 1) / N on the respaced index k of the chain (N its length)
      instead of the corrected 1 - t / T. It depends on the chain, set by `on_chain`.
    timestep_map: the chain used by `reference_uniform_off_by_one` (respaced index ->
      original t); None means the full chain 0..T-1.
  """

  kind: str = "classwise"
  psi: np.ndarray | None = None
  num_original_steps: int = 1000
  reference_tau_1000: bool = False
  reference_uniform_off_by_one: bool = False
  timestep_map: np.ndarray | None = None

  @classmethod
  def create(cls, kind: str = "classwise", psi=None, num_original_steps: int = 1000, *,
             reference_tau_1000: bool = False, reference_uniform_off_by_one: bool = False
             ) -> "LabelSchedule":
    return cls(kind=kind, psi=psi, num_original_steps=num_original_steps,
               reference_tau_1000=reference_tau_1000,
               reference_uniform_off_by_one=reference_uniform_off_by_one)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"label schedule kind {self.kind!r} is unknown; use one of {KINDS}")
    T = self.num_original_steps
    if isinstance(T, bool) or int(T) != T or T <= 0:
      raise ValueError(f"num_original_steps must be a positive integer, got {T!r}")
    T = int(T)
    object.__setattr__(self, "num_original_steps", T)
    if self.kind == "classwise":
      if self.psi is None:
        raise ValueError("label schedule 'classwise' needs psi (one value per label class)")
      psi = _checked_psi(self.psi, "psi")
      object.__setattr__(self, "psi", psi)
    elif self.psi is not None:
      object.__setattr__(self, "psi", np.asarray(self.psi, np.float64))
    if self.timestep_map is not None:
      tmap = np.asarray(self.timestep_map, np.int64)
      if tmap.ndim != 1 or tmap.size == 0 or np.any(np.diff(tmap) <= 0) or tmap[0] < 0 \
          or tmap[-1] >= T:
        raise ValueError(f"timestep_map must be increasing within 0..{T - 1}, got {tmap}")
      object.__setattr__(self, "timestep_map", tmap)

    # Tables over original t = 0..T (the extra row T is τ = 1: fully absorbed).
    t = np.arange(T + 1)
    denom = 1000 if self.reference_tau_1000 else T
    tau = (t.astype(np.float32) / np.float32(denom)).astype(np.float64)  # τ is float32
    if self.kind == "classwise":
      gamma = classwise_gamma(tau, self.psi)
    elif self.kind == "uniform" and self.reference_uniform_off_by_one:
      tmap = self.timestep_map if self.timestep_map is not None else np.arange(T)
      n = len(tmap)
      # beta_k = 1/(N-k), gamma_k = prod_{j<=k}(1 - beta_j) = 1 - (k+1)/N (as the reference,
      # by the product) on the respaced index k; steps off the chain take the index below.
      gamma_k = np.cumprod(1.0 - 1.0 / (n - np.arange(n, dtype=np.float64)))
      k = np.clip(np.searchsorted(tmap, t, side="right") - 1, 0, n - 1)
      gamma = gamma_k[k][:, None]
    elif self.kind == "uniform":
      gamma = (1.0 - tau)[:, None]
    else:
      gamma = np.ones((T + 1, 1), np.float64)
    floor = np.floor(gamma)
    thr64 = 1.0 - (gamma - floor)
    thr32 = thr64.astype(np.float32)
    low = thr32.astype(np.float64) < thr64
    thr32[low] = np.nextafter(thr32[low], np.float32(np.inf))
    object.__setattr__(self, "_gamma", gamma)
    object.__setattr__(self, "_floor", floor.astype(np.float32))
    object.__setattr__(self, "_thr", thr32)

  @property
  def num_classes(self) -> int | None:
    """K for a class-wise schedule; None when the schedule is the same for every class."""
    return None if self.kind != "classwise" else int(self.psi.shape[0])

  def on_chain(self, timestep_map) -> "LabelSchedule":
    """This schedule for sampling on a (respaced) chain.

    Only `reference_uniform_off_by_one` depends on the chain; everything else returns self.
    """
    if self.kind == "uniform" and self.reference_uniform_off_by_one:
      return dataclasses.replace(self, timestep_map=np.asarray(timestep_map))
    return self

  def gamma_table(self) -> np.ndarray:
    """(T + 1, K) float64 survival probabilities at original t = 0..T ((T + 1, 1) when
    the schedule does not depend on the class)."""
    return self._gamma

  def gamma(self, t_orig, num_classes: int | None = None) -> jax.Array:
    """Survival probabilities (B, K) float32 at original timesteps t_orig (B,).

    For "uniform"/"none" the result is (B, 1), or (B, num_classes) when that is given.
    """
    g = jnp.asarray(self._gamma.astype(np.float32))[jnp.asarray(t_orig)]
    if num_classes is not None and g.shape[-1] == 1:
      g = jnp.broadcast_to(g, g.shape[:-1] + (num_classes,))
    return g


def one_hot(ids, num_classes: int) -> jax.Array:
  """Class ids (..., H, W) int (-1 = unknown) -> float32 one-hot (..., H, W, K).

  The project's only one-hot: labels stay class ids on the host and on the way to the
  device, and become one-hot here, inside the jitted program. Id -1 (the absorbing unknown
  state) gives the all-zero vector.
  """
  return jax.nn.one_hot(jnp.asarray(ids), int(num_classes), dtype=jnp.float32)


def condition(ids, num_classes: int, edge=None) -> jax.Array:
  """The network's conditioning (B, H, W, L) = concat([one_hot(ids), edge]) (traceable).

  Args:
    ids: (B, H, W) int class ids, -1 = unknown.
    num_classes: K.
    edge: optional (B, H, W, 1) float instance-edge channel.
  """
  cond = one_hot(ids, num_classes)
  if edge is None:
    return cond
  return jnp.concatenate([cond, jnp.asarray(edge, jnp.float32)], axis=-1)


def diffuse_labels(label, t_orig, u, schedule: LabelSchedule) -> jax.Array:
  """Samples y_t ~ q(y_t | y_0): y_0 * floor(g + u) per pixel.

  Args:
    label: (B, H, W, K) one-hot (or all-zero) label maps, float.
    t_orig: (B,) int original timesteps (0..T; T means τ = 1).
    u: (B, H, W) uniforms in [0, 1), one per pixel, shared by all K channels.
    schedule: the label schedule.

  Returns:
    (B, H, W, K) float32: each pixel either its input one-hot vector or all zero.
  """
  label = jnp.asarray(label, jnp.float32)
  k = label.shape[-1]
  if schedule.num_classes is not None and schedule.num_classes != k:
    raise ValueError(
        f"label map has {k} channels but the class-wise schedule has psi for "
        f"{schedule.num_classes} classes")
  t_orig = jnp.asarray(t_orig)
  u = jnp.asarray(u, jnp.float32)
  if u.shape != label.shape[:-1]:
    raise ValueError(f"u must have shape {label.shape[:-1]} (one per pixel), got {u.shape}")
  floor = jnp.asarray(schedule._floor)[t_orig]  # (B, Kt)
  thr = jnp.asarray(schedule._thr)[t_orig]
  if floor.shape[-1] == 1:
    floor_px = floor[:, 0, None, None]
    thr_px = thr[:, 0, None, None]
  else:
    # Gather the pixel's own class (exact; no matmul, so no TF32 on GPUs). All-zero pixels
    # pick class 0 here, which does not matter: they are multiplied by zero.
    cls = jnp.argmax(label, axis=-1)
    b = jnp.arange(label.shape[0])[:, None, None]
    floor_px = floor[b, cls]
    thr_px = thr[b, cls]
  mask = floor_px + (u >= thr_px).astype(jnp.float32)
  return label * mask[..., None]


def diffuse_condition(cond, t_orig, key, schedule: LabelSchedule,
                      num_label_channels: int, *, u=None) -> jax.Array:
  """Label diffusion of the conditioning tensor; the edge channel(s) pass unchanged.

  Args:
    cond: (B, H, W, L) = concat([label (K channels), edge], -1).
    t_orig: (B,) original timesteps.
    key: PRNG key for the per-pixel uniforms (ignored when `u` is given).
    schedule: the label schedule.
    num_label_channels: K; channels K..L-1 (the instance edge) are never diffused.
    u: optional (B, H, W) uniforms to use instead of drawing them.
  """
  cond = jnp.asarray(cond, jnp.float32)
  k = _check_num_label_channels(num_label_channels, cond.shape[-1])
  if u is None:
    u = jax.random.uniform(key, cond.shape[:-1], jnp.float32)
  label_t = diffuse_labels(cond[..., :k], t_orig, u, schedule)
  if k == cond.shape[-1]:
    return label_t
  return jnp.concatenate([label_t, cond[..., k:]], axis=-1)


def cfg_drop(cond, key, rate: float) -> jax.Array:
  """Zeroes the whole conditioning (label and edge) of each sample with probability rate."""
  cond = jnp.asarray(cond, jnp.float32)
  keep = cfg_keep(key, rate, cond.shape[0])
  return cond * keep.astype(cond.dtype).reshape((-1,) + (1,) * (cond.ndim - 1))


def cfg_keep(key, rate: float, batch_size: int) -> jax.Array:
  """(B,) bool: True where a sample keeps its conditioning (what `cfg_drop` uses)."""
  rate = float(rate)
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"drop rate must be in [0, 1], got {rate}")
  if rate == 0.0:
    return jnp.ones((batch_size,), bool)
  return jax.random.bernoulli(key, 1.0 - rate, (batch_size,))


def load_psi(path, num_classes: int, *, force_last_linear: bool = False) -> np.ndarray:
  """Loads a per-class ψ file (e.g. the official `ade20k_psiphi.npy`) as (K,) float64.

  Args:
    path: a .npy file holding one ψ per label class (edge channel excluded).
    num_classes: K, the number of label classes of the dataset.
    force_last_linear: set the last entry to 0.5 (linear schedule), as the reference does
      for ADE20K and COCO-Stuff, whose last class is "unlabeled".

  Raises:
    FileNotFoundError: no such file.
    ValueError: not a 1-D array of K finite values > 0 (the message names the file).
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"psi file {path!r} does not exist")
  try:
    psi = np.load(path, allow_pickle=False)
  except ValueError as e:
    raise ValueError(f"psi file {path!r} is not a plain .npy array: {e}") from None
  psi = np.asarray(psi, np.float64)
  if psi.ndim != 1:
    raise ValueError(f"psi file {path!r} holds an array of shape {psi.shape}; expected a "
                     f"1-D array with one value per class ({num_classes})")
  if psi.shape[0] != num_classes:
    raise ValueError(
        f"psi file {path!r} has {psi.shape[0]} entries but the dataset has {num_classes} "
        f"label classes; use the file made for this dataset (edge channel excluded)")
  psi = psi.copy()
  if force_last_linear:
    psi[-1] = LINEAR_PSI
  return _checked_psi(psi, f"psi file {path!r}")


def psi_from_statistics(area_fraction_sum, image_count, *, absent_value: float = 0.5
                        ) -> np.ndarray:
  """ψ_c = image_count_c / area_fraction_sum_c from label statistics, (K,) float64.

  That is 1 / (mean fraction of the image covered by class c over the images that contain
  c): small classes get a large ψ and so diffuse slowly. Classes that never occur get
  `absent_value` (0.5: the linear schedule).

  Args:
    area_fraction_sum: (K,) sum over images of the fraction of the image covered by c.
    image_count: (K,) number of images in which class c occurs.
    absent_value: ψ for classes with image_count 0 (must be > 0).
  """
  area = np.asarray(area_fraction_sum, np.float64)
  count = np.asarray(image_count, np.float64)
  if area.ndim != 1 or area.shape != count.shape:
    raise ValueError(f"area_fraction_sum {area.shape} and image_count {count.shape} must be "
                     f"1-D arrays of the same length (one per class)")
  if not absent_value > 0:
    raise ValueError(f"absent_value must be > 0, got {absent_value}")
  bad = np.nonzero(~np.isfinite(area) | ~np.isfinite(count) | (area < 0) | (count < 0))[0]
  if bad.size:
    raise ValueError(f"class statistics must be finite and >= 0; bad classes {bad.tolist()}")
  bad = np.nonzero((count > 0) & (area <= 0))[0]
  if bad.size:
    raise ValueError(f"classes {bad.tolist()} occur in images but cover no area")
  bad = np.nonzero(area > count)[0]
  if bad.size:
    raise ValueError(f"classes {bad.tolist()} have area_fraction_sum > image_count (a "
                     f"fraction of an image is at most 1)")
  present = count > 0
  psi = np.full(area.shape, float(absent_value), np.float64)
  psi[present] = count[present] / area[present]
  return psi


def validate_label_map(label, name: str = "label") -> None:
  """Checks on a concrete array that every pixel is one-hot or all-zero.

  Call it on host data (not inside jit). Raises ValueError naming the first bad pixel.
  """
  arr = np.asarray(label)
  if arr.ndim < 1 or arr.shape[-1] == 0:
    raise ValueError(f"{name} must have a trailing class axis, got shape {arr.shape}")
  not_binary = (arr != 0) & (arr != 1)
  if not_binary.any():
    idx = tuple(int(i) for i in np.argwhere(not_binary)[0])
    raise ValueError(f"{name} must hold only 0 and 1; {name}[{idx}] = {arr[idx]!r}")
  s = arr.sum(axis=-1)
  bad = s > 1
  if bad.any():
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"{name} must be one-hot or all-zero per pixel; pixel {idx} has "
                     f"{int(s[idx])} classes set")


def _checked_psi(psi, what: str) -> np.ndarray:
  psi = np.asarray(psi, np.float64)
  if psi.ndim != 1 or psi.size == 0:
    raise ValueError(f"{what}: psi must be a non-empty 1-D array, got shape {psi.shape}")
  bad = np.nonzero(~np.isfinite(psi) | (psi <= 0))[0]
  if bad.size:
    raise ValueError(f"{what}: psi must be finite and > 0; indices {bad.tolist()} hold "
                     f"{psi[bad].tolist()}")
  return psi


def _check_num_label_channels(k, total: int) -> int:
  if isinstance(k, bool) or int(k) != k or not 0 < int(k) <= total:
    raise ValueError(
        f"num_label_channels must be in 1..{total} (the conditioning has {total} channels), "
        f"got {k!r}")
  return int(k)
