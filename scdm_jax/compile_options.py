"""The XLA compiler options every program of this project is compiled with.

On the CPU, XLA (jaxlib 0.10) hands dots, reductions and convolutions to YNNPACK by
default. Its convolutions, and above all their gradients, run slower than XLA's own Eigen
convolutions on the 2-core development VM (AMD Zen 5): one 3x3 conv 128 -> 192 channels at
batch 16, 32 px, forward and both gradients, 108-120 against 91-96 ms; in the bench's rows,
run one after the other, the S train step 1.49 against 1.20 s, L 4.15 against 3.56 s,
25-step sampling 10.1 against 8.2 s (docs/performance.md). So CPU programs keep YNNPACK
for dots and reductions only (without it on the reductions too, S took 1.55-1.84 s).

A user's own `--xla_cpu_experimental_ynn_fusion_type` in XLA_FLAGS wins: then nothing is
passed. Other backends get no options.
"""

from __future__ import annotations

import os

import jax

_YNN_FLAG = "xla_cpu_experimental_ynn_fusion_type"
# XLA's CPU default without LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION.
_YNN_DOTS_AND_REDUCTIONS = ("LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,"
                            "LIBRARY_FUSION_TYPE_REDUCE")


def compiler_options(backend: str | None = None) -> dict[str, str] | None:
  """Options for `jax.jit(..., compiler_options=...)` / `Lowered.compile(...)`."""
  backend = backend or jax.default_backend()
  if backend != "cpu" or _YNN_FLAG in os.environ.get("XLA_FLAGS", ""):
    return None
  return {_YNN_FLAG: _YNN_DOTS_AND_REDUCTIONS}
