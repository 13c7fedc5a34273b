# shellcheck shell=bash
# Shared settings and helpers of the launch scripts. Sourced, never run.
#
# Every script is driven by environment variables (see docs/launch.md). Required ones are
# checked up front with one message per missing variable. DRY_RUN=1 prints each command,
# shell-quoted so that it can be pasted, instead of running it.

set -euo pipefail

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="${REPO_ROOT:-$(cd "${LAUNCH_DIR}/.." && pwd)}"

: "${DRY_RUN:=0}"
: "${MODE:=train}"                 # scdm_jax.main --mode
: "${EXTRA_ARGS:=}"                # appended to the scdm_jax.main command line
: "${REMOTE_DIR:=scdm-jax}"        # checkout on every TPU worker, relative to $HOME
: "${PYTHON_VERSION:=3.11}"        # venv Python on the workers (the package needs >= 3.11)
: "${SSH_FLAGS:=}"                 # extra gcloud ssh/scp flags, e.g. "--tunnel-through-iap"
if [[ -z "${JAX_VERSION:-}" ]]; then
  JAX_VERSION="$(sed -n 's/^jax==//p' "${REPO_ROOT}/requirements.txt" 2>/dev/null | head -n1)"
  JAX_VERSION="${JAX_VERSION:-0.10.2}"
fi

declare -A VAR_HELP=(
  [TPU_NAME]="name of the TPU VM, e.g. scdm-v4-32"
  [ZONE]="zone of the TPU, e.g. us-central2-b"
  [PROJECT]="Google Cloud project id"
  [ACCELERATOR_TYPE]="TPU type and chip count, e.g. v4-32, v5litepod-16, v6e-8"
  [CONFIG]="config file[:variant] relative to the repository, e.g. configs/ade20k.py"
  [WORKDIR]="run directory all hosts can reach (gs://bucket/path on TPU pods, a shared filesystem on SLURM)"
)

die() {
  echo "error: $*" >&2
  exit 2
}

# require_vars VAR... : exits 2 naming every variable that is unset or empty.
require_vars() {
  local missing=0 v
  for v in "$@"; do
    if [[ -z "${!v:-}" ]]; then
      echo "error: ${v} is not set: ${VAR_HELP[$v]:-required}. Example: export ${v}=..." >&2
      missing=1
    fi
  done
  if ((missing)); then
    echo "(see docs/launch.md; DRY_RUN=1 prints the commands without running them)" >&2
    exit 2
  fi
}

# shell_quote ARG... : one line that a shell parses back into the same words.
shell_quote() {
  local out=() a
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then
      out+=("$a")
    else
      out+=("'${a//\'/\'\\\'\'}'")
    fi
  done
  echo "${out[*]}"
}

# run CMD... : prints the command (stdout when DRY_RUN=1, else stderr) and runs it unless
# DRY_RUN=1.
run() {
  if [[ "${DRY_RUN}" == 1 ]]; then
    echo "+ $(shell_quote "$@")"
  else
    echo "+ $(shell_quote "$@")" >&2
    "$@"
  fi
}

# The scdm_jax.main command line (one string, safe for a remote shell).
main_command() {
  local cmd
  cmd="python -m scdm_jax.main --config $(printf '%q' "${CONFIG}") --workdir $(printf '%q' "${WORKDIR}") --mode $(printf '%q' "${MODE}")"
  if [[ -n "${EXTRA_ARGS}" ]]; then
    cmd+=" ${EXTRA_ARGS}"
  fi
  echo "${cmd}"
}

# ---------------------------------------------------------------- Cloud TPU VM helpers

default_runtime_version() {
  case "${ACCELERATOR_TYPE:-}" in
    v5litepod-* | v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) echo "tpu-ubuntu2204-base" ;;  # v4, v5p
  esac
}


# tpu_ssh WORKER COMMAND : runs COMMAND (a string) on WORKER ("all", "0", "0,1", ...).
tpu_ssh() {
  local worker=$1 command=$2 extra=()
  read -r -a extra <<<"${SSH_FLAGS}"
  run gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --project="${PROJECT}" \
    --worker="${worker}" "${extra[@]}" --command="${command}"
}

# tpu_scp WORKER SRC DEST [flags...] : gcloud's scp (remote paths as TPU_NAME:path).
tpu_scp() {
  local worker=$1 src=$2 dest=$3 extra=()
  shift 3
  read -r -a extra <<<"${SSH_FLAGS}"
  run gcloud compute tpus tpu-vm scp "${src}" "${dest}" --zone="${ZONE}" --project="${PROJECT}" \
    --worker="${worker}" "${extra[@]}" "$@"
}
