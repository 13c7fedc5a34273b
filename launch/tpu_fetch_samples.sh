#!/usr/bin/env bash
# Copies the samples of a run to this machine.
#
# Required: TPU_NAME, ZONE, PROJECT and WORKDIR (or SAMPLES_DIR).
# Optional:
#   SAMPLES_SUBDIR  default samples, i.e. WORKDIR/samples as --mode sample writes by default;
#   SAMPLES_DIR     absolute path of the samples on the workers (when --config.sample.output_dir
#                   pointed to a local directory); copied with scp even if WORKDIR is gs://;
#   LOCAL_DIR       default ./samples-<TPU_NAME>;
#   FETCH_WORKERS   for samples on the workers' disks: which workers to copy from (default
#                   "0"; "0,1,2,3" for per-host outputs), each into LOCAL_DIR/worker<i>;
#   SSH_FLAGS, DRY_RUN=1.
# Samples under a gs:// WORKDIR are copied with `gcloud storage cp -r` (works after delete).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

: "${SAMPLES_SUBDIR:=samples}"
if [[ -z "${SAMPLES_DIR:-}" && "${WORKDIR:-}" == gs://* ]]; then
  : "${LOCAL_DIR:=./samples-${TPU_NAME:-run}}"
  run mkdir -p "${LOCAL_DIR}"
  run gcloud storage cp -r "${WORKDIR%/}/${SAMPLES_SUBDIR}" "${LOCAL_DIR}/"
else
  if [[ -n "${SAMPLES_DIR:-}" ]]; then
    require_vars TPU_NAME ZONE PROJECT
    remote="${SAMPLES_DIR%/}"
  else
    require_vars TPU_NAME ZONE PROJECT WORKDIR
    remote="${WORKDIR%/}/${SAMPLES_SUBDIR}"
  fi
  : "${LOCAL_DIR:=./samples-${TPU_NAME}}"
  : "${FETCH_WORKERS:=0}"
  for w in ${FETCH_WORKERS//,/ }; do
    run mkdir -p "${LOCAL_DIR}/worker${w}"
    tpu_scp "${w}" "${TPU_NAME}:${remote}" "${LOCAL_DIR}/worker${w}/" --recurse
  done
fi
