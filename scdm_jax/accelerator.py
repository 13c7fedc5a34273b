"""Start-up checks of the backend JAX found: a CPU where an accelerator was required, and
bfloat16 where it is not native.

JAX falls back to the CPU without a word when its GPU/TPU plugin is missing or fails to
load, so a cluster job can run 100x slower unnoticed: `config.require_accelerator=True`
turns that into a one-line error. The published presets compute in bfloat16, which XLA
emulates on CPUs and which GPUs before compute capability 8.0 (V100, T4) run slowly or
not at all; there `config.bf16_fallback` (on by default) computes in float32 instead, with
one warning line. Parameters are float32 either way, so checkpoints do not change.
"""

from __future__ import annotations

from absl import logging
import jax
import ml_collections

# Config sections whose `dtype` is a compute dtype.
_DTYPE_FIELDS = ("model", "paint")


def bf16_not_native(backend: str, devices) -> str | None:
  """Why bfloat16 is not native on `backend` (None where it is)."""
  if backend == "cpu":
    return "the CPU backend emulates it"
  if backend in ("gpu", "cuda", "rocm"):
    cc = getattr(devices[0], "compute_capability", None)
    try:
      if cc is not None and float(cc) < 8.0:
        return f"GPU compute capability {cc} < 8.0 ({devices[0].device_kind})"
    except ValueError:
      return None  # e.g. a ROCm "gfx90a" string: assume native
  return None


def check(config: ml_collections.ConfigDict, backend: str | None = None,
          devices=None) -> list[str]:
  """Applies the checks to `config` in place; returns the dtype fields set to float32.

  Raises:
    ValueError: (one line) when config.require_accelerator is set and the backend is CPU.
  """
  backend = backend or jax.default_backend()
  devices = devices if devices is not None else jax.devices()
  if bool(config.get("require_accelerator", False)) and backend == "cpu":
    raise ValueError(
        f"config.require_accelerator=True but JAX {jax.__version__} runs on the CPU (no GPU "
        "or TPU backend loaded): install the accelerator build (README, Install), check "
        "CUDA_VISIBLE_DEVICES / the TPU runtime, or drop --config.require_accelerator.")
  reason = bf16_not_native(backend, devices)
  changed = []
  if reason and bool(config.get("bf16_fallback", True)):
    for section in _DTYPE_FIELDS:
      if section in config and config[section].get("dtype") == "bfloat16":
        config[section].dtype = "float32"
        changed.append(f"{section}.dtype")
  if changed:
    logging.warning("%s: bfloat16 is not native here (%s); computing in float32 "
                    "(--config.bf16_fallback=False keeps bfloat16).",
                    ", ".join(changed), reason)
  return changed
