#!/usr/bin/env bash
# Runs every test of tf_lars: pytest, then the Bazel targets (offline).
# Sets up .venv first (tools/setup_env.sh), so it works on a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."
TF_LARS_WITH_BAZEL=1 bash tools/setup_env.sh

.venv/bin/python -m pytest -q --durations=10 "$@"

if command -v bazel >/dev/null; then
  echo "== bazel test //:optimizer_tests"
  TF_LARS_PYTHON="$PWD/.venv/bin/python" bazel test //:optimizer_tests
else
  echo "bazel not found: install Debian's bazel-bootstrap to run the Bazel targets" >&2
  exit 1
fi
