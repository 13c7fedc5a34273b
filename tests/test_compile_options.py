"""The CPU programs are compiled with XLA's Eigen convolutions (scdm_jax/compile_options.py)."""

import re

import jax
import jax.numpy as jnp

from scdm_jax import compile_options


def _conv_grad_program(options):
  x, w = jnp.ones((2, 16, 16, 64)), jnp.ones((3, 3, 64, 64))
  conv = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  grad = jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1))
  return jax.jit(grad).lower(x, w).compile(options).as_text()


def _ynn_convolutions(hlo: str) -> int:
  """Fusions handed to YNNPACK whose source op is a convolution."""
  return len(re.findall(r'conv_general_dilated"[^\n]*"__ynn_fusion"', hlo))


def test_cpu_programs_leave_convolutions_to_xla():
  options = compile_options.compiler_options()
  assert jax.default_backend() == "cpu" and options
  # XLA's default hands this program's convolutions to YNNPACK; the options keep them.
  assert _ynn_convolutions(_conv_grad_program(None)) > 0
  assert _ynn_convolutions(_conv_grad_program(options)) == 0


def test_other_backends_and_a_users_own_flag_get_no_options(monkeypatch):
  assert compile_options.compiler_options("gpu") is None
  assert compile_options.compiler_options("tpu") is None
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
  assert compile_options.compiler_options("cpu") is None
