#!/usr/bin/env bash
# Copies the samples of a run to this machine.
#
# Required: TPU_NAME, ZONE, PROJECT, WORKDIR.
# Optional: SAMPLES_SUBDIR (default samples, i.e. WORKDIR/samples as --mode sample writes),
#   LOCAL_DIR (default ./samples-<TPU_NAME>), FETCH_WORKERS (for a WORKDIR local to the
#   workers: which workers to copy from, default "0"; each goes to LOCAL_DIR/worker<i>),
#   SSH_FLAGS, DRY_RUN=1.
# A gs:// WORKDIR is copied with `gcloud storage cp -r` (no TPU needed, works after delete).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

: "${SAMPLES_SUBDIR:=samples}"
if [[ "${WORKDIR:-}" == gs://* ]]; then
  require_vars WORKDIR
  : "${LOCAL_DIR:=./samples-${TPU_NAME:-run}}"
  run mkdir -p "${LOCAL_DIR}"
  run gcloud storage cp -r "${WORKDIR%/}/${SAMPLES_SUBDIR}" "${LOCAL_DIR}/"
else
  require_vars TPU_NAME ZONE PROJECT WORKDIR
  : "${LOCAL_DIR:=./samples-${TPU_NAME}}"
  : "${FETCH_WORKERS:=0}"
  for w in ${FETCH_WORKERS//,/ }; do
    run mkdir -p "${LOCAL_DIR}/worker${w}"
    tpu_scp "${w}" "${TPU_NAME}:${WORKDIR%/}/${SAMPLES_SUBDIR}" "${LOCAL_DIR}/worker${w}/" --recurse
  done
fi
