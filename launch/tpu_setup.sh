#!/usr/bin/env bash
# Installs jax[tpu] and this package in a venv on every worker of a TPU VM.
#
# Required: TPU_NAME, ZONE, PROJECT.
# Source of the code (one of):
#   REPO_URL=https://github.com/you/scdm-jax.git [REPO_REF=main]  each worker clones it;
#   (unset REPO_URL)  this checkout is packed (git-tracked plus untracked, not ignored, files)
#                     and copied to every worker with `gcloud compute tpus tpu-vm scp`.
# Optional: REMOTE_DIR (default scdm-jax, under $HOME), PYTHON_VERSION (default 3.11),
#   JAX_VERSION (default: the pin in requirements.txt), PIP_EXTRAS (default "data": the
#   tf.data input pipeline), VERIFY=0 to skip the device-count check, SSH_FLAGS, DRY_RUN=1.
# Dataset step (optional; once per dataset, on worker 0 after the install):
#   DATASET=ade20k|coco_stuff|celebamask_hq|cityscapes|procedural and TFDS_DATA_DIR=gs://...
#   prepare the dataset as TFDS array_record files there; train with
#   EXTRA_ARGS="--config.data.source=tfds --config.data.tfds_data_dir=$TFDS_DATA_DIR".
#   MANUAL_DIR: the downloads (a folder on worker 0, or gs://... copied there first);
#   DATASET_ARGS: more flags of `python -m scdm_jax.data.tfds_builders` (e.g. --image_size 64).
#
# The TPU images ship Python 3.10; the venv is made by uv, which fetches a managed CPython
# ${PYTHON_VERSION}. Re-running is safe: the checkout is replaced, the venv reused.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require_vars TPU_NAME ZONE PROJECT
: "${PIP_EXTRAS:=data}"
: "${VERIFY:=1}"
dir="\$HOME/${REMOTE_DIR}"

if [[ -n "${REPO_URL:-}" ]]; then
  : "${REPO_REF:=main}"
  fetch="rm -rf ${dir} && git clone --quiet $(printf '%q' "${REPO_URL}") ${dir} && git -C ${dir} checkout --quiet $(printf '%q' "${REPO_REF}")"
else
  tarball="${TMPDIR:-/tmp}/scdm-jax-src-$$.tar.gz"
  if [[ "${DRY_RUN}" == 1 ]]; then
    echo "+ (cd $(shell_quote "${REPO_ROOT}") && git ls-files -z --cached --others --exclude-standard | tar --null -T - -czf $(shell_quote "${tarball}"))"
  else
    if git -C "${REPO_ROOT}" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
      (cd "${REPO_ROOT}" && git ls-files -z --cached --others --exclude-standard |
        tar --null -T - -czf "${tarball}")
    else
      tar -C "${REPO_ROOT}" --exclude=.venv --exclude=.git --exclude='__pycache__' \
        -czf "${tarball}" .
    fi
    trap 'rm -f "${tarball}"' EXIT
  fi
  tpu_scp all "${tarball}" "${TPU_NAME}:scdm-jax-src.tar.gz"
  fetch="rm -rf ${dir} && mkdir -p ${dir} && tar -xzf \$HOME/scdm-jax-src.tar.gz -C ${dir} && rm \$HOME/scdm-jax-src.tar.gz"
fi

extras=""
if [[ -n "${PIP_EXTRAS}" ]]; then extras="[${PIP_EXTRAS}]"; fi
steps=(
  "set -e"
  "export PATH=\$HOME/.local/bin:\$PATH"
  "command -v uv >/dev/null || python3 -m pip install --user --quiet uv"
  "${fetch}"
  "cd ${dir}"
  "uv venv --allow-existing --python ${PYTHON_VERSION} .venv"
  ". .venv/bin/activate"
  # The pins of requirements.txt as constraints, without torch (only the converter needs it).
  "grep -vE '^(-e|torch)' requirements.txt > .launch-constraints.txt"
  "uv pip install --quiet -c .launch-constraints.txt 'jax[tpu]==${JAX_VERSION}' -e '.${extras}'"
)
if [[ "${VERIFY}" == 1 ]]; then
  # On a pod slice every worker must run this at the same time (--worker=all does).
  steps+=("python -c 'import jax; print(\"worker\", jax.process_index(), \"of\", jax.process_count(), \":\", jax.local_device_count(), \"local /\", jax.device_count(), \"devices\")'")
fi

command="$(printf '%s; ' "${steps[@]}")"
tpu_ssh all "${command% }"

if [[ -n "${DATASET:-}" ]]; then
  require_vars TFDS_DATA_DIR
  if [[ "${DATASET}" != procedural && -z "${MANUAL_DIR:-}" ]]; then
    die "MANUAL_DIR is not set: the ${DATASET} downloads (see docs/data.md, 'TFDS')"
  fi
  prep=("cd ${dir}" ". .venv/bin/activate")
  manual="${MANUAL_DIR:-}"
  if [[ "${manual}" == gs://* ]]; then
    prep+=("mkdir -p \$HOME/scdm-manual" "gcloud storage cp -r $(printf '%q' "${manual%/}")/* \$HOME/scdm-manual/")
    manual="\$HOME/scdm-manual"
  fi
  cmd="python -m scdm_jax.data.tfds_builders --dataset $(printf '%q' "${DATASET}") --data_dir $(printf '%q' "${TFDS_DATA_DIR}")"
  if [[ -n "${manual}" ]]; then cmd+=" --manual_dir ${manual}"; fi
  if [[ -n "${DATASET_ARGS:-}" ]]; then cmd+=" ${DATASET_ARGS}"; fi
  prep+=("${cmd}")
  tpu_ssh 0 "set -e; $(printf '%s; ' "${prep[@]}")"
fi
