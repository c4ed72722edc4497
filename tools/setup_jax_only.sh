#!/usr/bin/env bash
# Sets up .venv-jax/: tf_lars with JAX and Keras but without TensorFlow, as
# on a machine that has only JAX (pip install "tf_lars[jax]"), for the tests
# that run the trainer and the in-memory study there. Idempotent.
# Environment: PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv-jax/bin/python ]; then
  echo "setup_jax_only: creating .venv-jax with ${PYTHON:-python3}"
  "${PYTHON:-python3}" -m venv .venv-jax
fi
echo "setup_jax_only: installing tf_lars[jax,study] (no TensorFlow) into .venv-jax"
.venv-jax/bin/python -m pip install -q --disable-pip-version-check -e ".[jax,study]"
if .venv-jax/bin/python -c "import tensorflow" 2>/dev/null; then
  echo "setup_jax_only: .venv-jax has TensorFlow, which it must not: delete .venv-jax and run again" >&2
  exit 1
fi
