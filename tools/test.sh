#!/usr/bin/env bash
# Runs every check of tf_lars: ruff and mypy, the docs, pytest, then the Bazel targets (offline).
# Sets up .venv, .venv-jax and .venv-oldest first (tools/setup_env.sh,
# tools/setup_jax_only.sh, tools/setup_oldest.sh), so it works on a fresh clone. Tests run on
# TF_LARS_TEST_JOBS processes (default: one per core; pytest-xdist).
set -euo pipefail
cd "$(dirname "$0")/.."
TF_LARS_WITH_BAZEL=1 bash tools/setup_env.sh
# The two other environments are independent: made side by side.
bash tools/setup_jax_only.sh & jax_only=$!
[ "${TF_LARS_SKIP_OLDEST:-0}" = 1 ] || bash tools/setup_oldest.sh
wait "$jax_only"

echo "== ruff (lint and format) and mypy (the public API's types)"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy

echo "== docs (Sphinx, warnings as errors: links, anchors, every public symbol documented)"
rm -rf build/docs
.venv/bin/sphinx-build -W --keep-going -q -b html docs build/docs

.venv/bin/python -m pytest -q --durations=15 -n "${TF_LARS_TEST_JOBS:-$(nproc)}" --dist=worksteal "$@"

if command -v bazel >/dev/null; then
  echo "== bazel test //:optimizer_tests"
  TF_LARS_PYTHON="$PWD/.venv/bin/python" bazel test //:optimizer_tests
else
  echo "bazel not found: install Debian's bazel-bootstrap to run the Bazel targets" >&2
  exit 1
fi
