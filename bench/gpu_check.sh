#!/usr/bin/env bash
# The check to run when a GPU machine is lent: at most 8 minutes, one JSON.
#   bench/gpu_check.sh [out.json] [extra gpu_check.py flags, e.g. --tiny]
# Needs only jax (CUDA build) + flax + optax + orbax + ml-collections + numpy + pillow: no
# TensorFlow, no torch (the JSON's "imports" section says whether either got imported).
# The JSON is rewritten after each section, so a timeout keeps the finished ones.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-gpu_check.json}"
shift || true
export PYTHONPATH="${here}/..${PYTHONPATH:+:${PYTHONPATH}}"
# Whole-GPU memory grabbing off, so peak_bytes_in_use is what the programs used.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
timeout --signal=TERM --kill-after=20 "${GPU_CHECK_TIMEOUT_S:-470}" \
  "${PYTHON:-python}" "${here}/gpu_check.py" --out "${out}" "$@"
rc=$?
echo "gpu_check: exit ${rc}, results in ${out}"
exit "${rc}"
