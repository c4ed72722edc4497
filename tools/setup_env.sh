#!/usr/bin/env bash
# Sets up what tf_lars needs on a fresh Debian/Ubuntu machine, idempotently:
#   .venv/ with tf_lars (editable), TensorFlow and the test tools;
#   Debian's dataset-fashion-mnist and bazel-bootstrap, when apt can install them.
# Environment: PYTHON (default python3), TF_PACKAGE (default tensorflow-cpu;
# use tensorflow for GPUs), TORCH_PACKAGE (default torch==2.13.0, for the
# torch-backend tests; TF_LARS_BACKENDS without "torch" leaves it out),
# TF_LARS_SKIP_APT=1 to leave system packages alone.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {  # apt_install PACKAGE: installs a Debian package if it can.
  dpkg -s "$1" >/dev/null 2>&1 && return 0
  [ "${TF_LARS_SKIP_APT:-0}" = 1 ] && return 1
  local sudo=""
  [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null && sudo="sudo -n"; } || return 1
  echo "setup: installing Debian package $1"
  { $sudo apt-get install -y -q "$1" || { $sudo apt-get update -q && $sudo apt-get install -y -q "$1"; }; } \
    >/tmp/tf_lars_apt_$1.log 2>&1 || { echo "setup: apt-get install $1 failed (see /tmp/tf_lars_apt_$1.log)"; return 1; }
}

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with ${PYTHON:-python3}"
  "${PYTHON:-python3}" -m venv .venv
fi
echo "setup: installing tf_lars[${TF_PACKAGE:-tensorflow-cpu},test,jax,study,lint,docs] into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${TF_PACKAGE:-tensorflow-cpu},test,jax,study,lint,docs]"
if [[ ",${TF_LARS_BACKENDS:-jax,torch}," == *,torch,* ]]; then
  # PyPI's default Linux torch is a CUDA build of several GB; where a CPU
  # wheel is at hand (or --index-url https://download.pytorch.org/whl/cpu
  # is reachable), pip takes that instead.
  .venv/bin/python -c "import torch" 2>/dev/null || {
    echo "setup: installing ${TORCH_PACKAGE:-torch==2.13.0} into .venv (the torch-backend tests)"
    # shellcheck disable=SC2086  # TORCH_PACKAGE may carry pip options
    .venv/bin/python -m pip install -q --disable-pip-version-check ${TORCH_PACKAGE:-torch==2.13.0}; }
fi

apt_install dataset-fashion-mnist || echo "setup: Fashion-MNIST not installed; tests that need it skip (apt-get install dataset-fashion-mnist)"
if [ "${TF_LARS_WITH_BAZEL:-0}" = 1 ] && ! command -v bazel >/dev/null; then
  apt_install bazel-bootstrap || echo "setup: Bazel not installed (apt-get install bazel-bootstrap)"
fi
