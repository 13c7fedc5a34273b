#!/usr/bin/env bash
# Creates a Cloud TPU VM (a single host or a pod slice).
#
# Required: TPU_NAME, ZONE, PROJECT, ACCELERATOR_TYPE (e.g. v4-8, v4-32, v5litepod-16, v6e-8).
# Optional: RUNTIME_VERSION (default by TPU generation: tpu-ubuntu2204-base for v4/v5p,
#           v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv6e for v6e), SPOT=1 (spot capacity),
#           RESERVED=1 (use a reservation), CREATE_FLAGS (more gcloud flags, e.g.
#           "--network=my-net --subnetwork=my-subnet"), DRY_RUN=1.
#
#   TPU_NAME=scdm ZONE=us-central2-b PROJECT=my-proj ACCELERATOR_TYPE=v4-32 \
#     bash launch/tpu_create.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require_vars TPU_NAME ZONE PROJECT ACCELERATOR_TYPE
: "${RUNTIME_VERSION:=$(default_runtime_version)}"

flags=(--accelerator-type="${ACCELERATOR_TYPE}" --version="${RUNTIME_VERSION}")
if [[ "${SPOT:-0}" == 1 ]]; then flags+=(--spot); fi
if [[ "${RESERVED:-0}" == 1 ]]; then flags+=(--reserved); fi
read -r -a more <<<"${CREATE_FLAGS:-}"

run gcloud compute tpus tpu-vm create "${TPU_NAME}" --zone="${ZONE}" --project="${PROJECT}" \
  "${flags[@]}" "${more[@]}"
