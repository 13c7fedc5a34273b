#!/usr/bin/env bash
# Deletes a TPU VM (stops billing). A gs:// WORKDIR is kept.
#
# Required: TPU_NAME, ZONE, PROJECT. Optional: YES=1 (no confirmation prompt), DRY_RUN=1.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require_vars TPU_NAME ZONE PROJECT
flags=()
if [[ "${YES:-0}" == 1 ]]; then flags+=(--quiet); fi
run gcloud compute tpus tpu-vm delete "${TPU_NAME}" --zone="${ZONE}" --project="${PROJECT}" \
  "${flags[@]}"
