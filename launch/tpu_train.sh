#!/usr/bin/env bash
# Runs `python -m scdm_jax.main` on every worker of a TPU VM (one process per host).
#
# Required: TPU_NAME, ZONE, PROJECT, CONFIG (e.g. configs/ade20k.py or configs/ade20k.py:tiny,
#   relative to the checkout), WORKDIR (gs://bucket/path: every host writes checkpoints there;
#   a local path only works on a single-host TPU).
# Optional: MODE (train|sample|export|evaluate; default train), EXTRA_ARGS (more flags, e.g.
#   "--config.train.batch_size=64"), ENV_VARS (extra environment for the workers, e.g.
#   "XLA_FLAGS=... TF_CPP_MIN_LOG_LEVEL=2"), DETACH=1 (run under nohup, log to LOG_FILE,
#   default ~/scdm-<mode>.log, and return at once), REMOTE_DIR, SSH_FLAGS, DRY_RUN=1.
#
# SCDM_DISTRIBUTED=1 makes scdm_jax.main call jax.distributed.initialize(), which finds the
# other workers from the TPU metadata. Re-running the same command resumes from WORKDIR.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require_vars TPU_NAME ZONE PROJECT CONFIG WORKDIR
if [[ "${WORKDIR}" != gs://* ]]; then
  echo "warning: WORKDIR=${WORKDIR} is not a gs:// path; on a multi-host slice every worker" \
    "must write to the same directory." >&2
fi

main="$(main_command)"
prefix="cd \$HOME/${REMOTE_DIR} && . .venv/bin/activate && export SCDM_DISTRIBUTED=1${ENV_VARS:+ ${ENV_VARS}}"
if [[ "${DETACH:-0}" == 1 ]]; then
  log="${LOG_FILE:-\$HOME/scdm-${MODE}.log}"
  command="${prefix} && (nohup ${main} < /dev/null > ${log} 2>&1 &) && echo started, log: ${log}"
else
  command="${prefix} && ${main}"
fi
tpu_ssh all "${command}"
