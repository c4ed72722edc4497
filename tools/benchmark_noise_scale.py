"""What measuring the gradient noise scale costs a training run.

    python tools/benchmark_noise_scale.py --model=resnet8 --image_size=28 --batch_size=256
    KERAS_BACKEND=jax python tools/benchmark_noise_scale.py --model=resnet50 \\
        --image_size=224 --batch_size=256                  # on a GPU

Keras only (any backend with a `noise_scale.gradient_function`). In one
process, on the same model, batch and data, timed fits alternate: plain
`fit`, and `fit` with `tf_lars.noise_scale.NoiseScale` measuring every
--every_steps steps in --micro_batches parts (the trainer's defaults). It
prints the median seconds a step of each, their ratio (the cost), and one
measurement's seconds against one step's, from which the cost of any other
--every_steps follows (measurement / (every_steps * step)). --out writes the
figures as JSON.
"""

import argparse
import json
import statistics
import time

import keras
import numpy as np

import tf_lars
from tf_lars import noise_scale


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet8", choices=sorted(tf_lars.models.MODELS))
    p.add_argument("--image_size", type=positive, default=28)
    p.add_argument("--channels", type=positive, default=1)
    p.add_argument("--num_classes", type=positive, default=10)
    p.add_argument("--batch_size", type=positive, default=256)
    p.add_argument("--every_steps", type=positive, default=100)
    p.add_argument("--micro_batches", type=positive, default=4)
    p.add_argument("--steps", type=positive, default=200, help="steps per timed fit")
    p.add_argument("--repeats", type=positive, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.micro_batches < 2 or args.batch_size % args.micro_batches:
        p.error(f"--micro_batches={args.micro_batches}: give 2 or more dividing --batch_size")
    if args.steps < args.every_steps:
        p.error(f"--steps={args.steps} < --every_steps={args.every_steps}: nothing to measure")
    return args


def build(args):
    keras.utils.set_random_seed(0)
    model = tf_lars.models.build(
        args.model,
        num_classes=args.num_classes,
        image_size=args.image_size,
        channels=args.channels,
    )
    model.compile(
        optimizer=tf_lars.LARS(0.1, trust_coefficient=0.02),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    return model


def data(args, batches):
    rng = np.random.default_rng(0)
    shape = (batches * args.batch_size, args.image_size, args.image_size, args.channels)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    labels = np.eye(args.num_classes, dtype="float32")[
        rng.integers(0, args.num_classes, len(images))
    ]
    return images, labels


def probe(images, labels, batch_size):
    while True:
        for start in range(0, len(images), batch_size):
            yield images[start : start + batch_size], labels[start : start + batch_size]


def timed_fit(model, images, labels, args, callbacks):
    """Seconds a step of one fit of --steps steps (its first step excluded)."""
    started = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                started.append(time.perf_counter())

    model.fit(
        images,
        labels,
        batch_size=args.batch_size,
        epochs=1,
        steps_per_epoch=args.steps,
        callbacks=[Clock(), *callbacks],
        verbose=0,
    )
    return (time.perf_counter() - started[0]) / (args.steps - 1)


def main():
    args = parse()
    model = build(args)
    images, labels = data(args, args.steps)  # (a fit never runs out of data)
    callback = noise_scale.NoiseScale(
        probe(images, labels, args.batch_size), args.micro_batches, args.every_steps
    )
    # Compiled once, the step and the measurement, before any timing.
    model.fit(images, labels, batch_size=args.batch_size, steps_per_epoch=2, verbose=0)
    callback.set_model(model)
    callback.on_train_begin()
    callback.measure(*next(probe(images, labels, args.batch_size)))
    plain, measured, seconds_per_measurement = [], [], []
    for _ in range(args.repeats):
        plain.append(timed_fit(model, images, labels, args, []))
        measured.append(timed_fit(model, images, labels, args, [callback]))
        start = time.perf_counter()  # one more measurement, timed alone
        callback.measure(*next(probe(images, labels, args.batch_size)))
        seconds_per_measurement.append(time.perf_counter() - start)
    step, with_noise = statistics.median(plain), statistics.median(measured)
    measurement = statistics.median(seconds_per_measurement)
    figures = dict(
        backend=keras.backend.backend(),
        model=args.model,
        batch_size=args.batch_size,
        every_steps=args.every_steps,
        micro_batches=args.micro_batches,
        step_seconds=step,
        step_seconds_with_noise_scale=with_noise,
        cost_ratio=with_noise / step,
        measurement_seconds=measurement,
        measurement_in_steps=measurement / step,
    )
    print("| fit | ms a step |\n|---|---|")
    print(f"| plain | {step * 1e3:.1f} |")
    print(
        f"| with NoiseScale (every {args.every_steps} steps, {args.micro_batches} parts) "
        f"| {with_noise * 1e3:.1f} |"
    )
    print(
        f"cost: x{figures['cost_ratio']:.3f} a step; one measurement takes "
        f"{figures['measurement_in_steps']:.2f} steps' time"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
