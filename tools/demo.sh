#!/usr/bin/env bash
# The main job: sets up .venv (tools/setup_env.sh), then a real LARS
# training run on Fashion-MNIST. Extra arguments go to the training run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
exec .venv/bin/python tools/quickstart.py "$@"
