#!/usr/bin/env bash
# Sets up .venv-oldest/: tf_lars on the oldest versions setup.py admits
# (Python 3.9, Keras 3.10.0, TensorFlow 2.16.2, JAX 0.4.30), for
# tests/test_versions.py. Idempotent. Environment: PYTHON_OLDEST (default
# python3.9; pyenv's is found too).
set -euo pipefail
cd "$(dirname "$0")/.."
PINS=(python=3.9 keras==3.10.0 tensorflow-cpu==2.16.2 jax==0.4.30 jaxlib==0.4.30)

if [ ! -x .venv-oldest/bin/python ]; then
  python="${PYTHON_OLDEST:-}"
  if [ -z "$python" ]; then
    for candidate in python3.9 "$HOME"/.pyenv/versions/3.9*/bin/python3.9; do
      command -v "$candidate" >/dev/null 2>&1 && "$candidate" -V >/dev/null 2>&1 && { python=$candidate; break; }
    done
  fi
  [ -n "$python" ] || { echo "setup_oldest: no Python 3.9 found: install one or set PYTHON_OLDEST" >&2; exit 1; }
  echo "setup_oldest: creating .venv-oldest with $python"
  "$python" -m venv .venv-oldest
fi
echo "setup_oldest: installing ${PINS[*]:1} and tf_lars into .venv-oldest"
.venv-oldest/bin/python -m pip install -q --disable-pip-version-check \
  "${PINS[@]:1}" -e ".[test]"
