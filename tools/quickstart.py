"""A short real training run with LARS on Fashion-MNIST (the default data).

    python tools/quickstart.py [--epochs 5] [--batch_size 1024]

Trains a small convnet with tf_lars.LARS, linear warmup and polynomial
decay, at a large batch, then prints the test accuracy and the wall time.
"""

import argparse
import time

import numpy as np

import keras
import tf_lars
from tf_lars.data import fashion_mnist


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=1024)
    parser.add_argument("--learning_rate", type=float, default=2.0)
    parser.add_argument("--data_dir", default=None,
                        help="folder with the four IDX files (default: Debian's)")
    args = parser.parse_args()

    (x, y), (tx, ty) = (fashion_mnist.load(s, args.data_dir) for s in ("train", "test"))
    x, tx = (a[..., None].astype(np.float32) / 255.0 for a in (x, tx))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, padding="same", use_bias=False),
        keras.layers.BatchNormalization(momentum=0.9), keras.layers.ReLU(),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", use_bias=False),
        keras.layers.BatchNormalization(momentum=0.9), keras.layers.ReLU(),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])
    steps = args.epochs * (len(x) // args.batch_size)
    schedule = tf_lars.schedules.WarmupPolynomialDecay(
        args.learning_rate, total_steps=steps, warmup_steps=steps // 5)
    model.compile(
        optimizer=tf_lars.LARS(learning_rate=schedule, weight_decay=5e-4,
                               trust_coefficient=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    start = time.time()
    model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=2)
    seconds = time.time() - start
    _, accuracy = model.evaluate(tx, ty, batch_size=1024, verbose=0)
    print(f"test accuracy {accuracy:.4f} after {args.epochs} epochs at batch "
          f"{args.batch_size} with LARS; {seconds:.0f} s, "
          f"{args.epochs * len(x) / seconds:.0f} images/s")


if __name__ == "__main__":
    main()
