#!/usr/bin/env bash
# The main job, on a fresh machine: sets up .venv (tools/setup_env.sh), gets
# Fashion-MNIST (Debian's dataset-fashion-mnist, or the four IDX files in
# $TF_LARS_FASHION_MNIST), builds its TFRecord shards with the tool, then
# trains the small ResNet with LARS at batch 1024 and evaluates it on the
# test split. Extra arguments go to tf-lars-train (e.g. --epochs=2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh

shards=data/fashion_mnist
if [ ! -f "$shards/validation-00001-of-00002" ]; then
  .venv/bin/python tools/build_fashion_mnist_tfrecords.py --output_dir="$shards" \
    ${TF_LARS_FASHION_MNIST:+--idx_dir="$TF_LARS_FASHION_MNIST"}
fi
run="runs/fashion_mnist-$(date +%Y%m%d-%H%M%S)"
.venv/bin/tf-lars-train --flagfile=fashion_mnist --data_dir="$shards" --model_dir="$run" "$@"
echo "TensorBoard: .venv/bin/tensorboard --logdir $run   (then open http://localhost:6006)"
