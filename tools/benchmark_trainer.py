"""What tf-lars-train's own machinery costs, against a bare `model.fit`.

    python tools/benchmark_trainer.py                       # ResNet-8, 28 px, batch 256
    python tools/benchmark_trainer.py --model=resnet50 --image_size=224 --batch_size=32

In one process, on the same model, optimizer, synthetic data and batch, it
alternates --repeats rounds of:
  * bare: `model.fit` of the trainer's own model and optimizer
    (`recipe.model`, `recipe.compile_args`) on its own input, with no
    callbacks beyond Keras's defaults;
  * trainer: `TrainingRun` as `tf-lars-train` builds it (`prepare`, then
    `fit` with every callback), in a fresh run folder;
  * trainer with --log_trust_ratios;
  * the trainer without one of its callbacks, for each callback (what it
    costs is what leaving it out gains).
Each is timed over the steps after its first epoch (compilation and the
first backup excluded). Prints images/s of each, the ratios to bare, and
JSON (--out writes it).
"""

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time

import keras


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet8")
    p.add_argument("--image_size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--num_classes", type=int, default=10)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--steps_per_epoch", type=int, default=20)
    p.add_argument("--epochs", type=int, default=4, help="the first one is not timed")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--per_callback", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", default=None)
    return p.parse_args()


class Clock(keras.callbacks.Callback):
    """Seconds and steps from the end of the first epoch to the end."""

    def __init__(self):
        super().__init__()
        self.start, self.steps = None, 0

    def on_epoch_end(self, epoch, logs=None):
        if self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.start is not None:
            self.steps += 1

    def on_train_end(self, logs=None):
        self.seconds = time.perf_counter() - self.start


def config(args, **changes):
    from tf_lars.training.config import TrainConfig

    return dataclasses.replace(
        TrainConfig(
            model=args.model,
            data_format="synthetic",
            image_size=args.image_size,
            channels=args.channels,
            num_classes=args.num_classes,
            preset="small" if args.channels == 1 else "tpu",
            batch_size=args.batch_size,
            train_examples=args.batch_size * args.steps_per_epoch,
            eval_examples=args.batch_size,
            epochs=args.epochs,
            warmup_epochs=1,
            eval_every_epochs=0,
            learning_rate=0.5,
            verbose=0,
            seed=1,
            model_dir=tempfile.mkdtemp(prefix="tf_lars_bench_"),
        ),
        **changes,
    )


def bare(args, engine):
    """A bare `fit` of the trainer's model, optimizer and input: images/s."""
    from tf_lars.training import inputs, recipe

    cfg = config(args)
    data = inputs.spec_of(cfg)
    plan = recipe.derive(cfg, data, engine.num_replicas_in_sync)
    with engine.scope():
        model = recipe.model(cfg, data)
        model.compile(**recipe.compile_args(plan, cfg))
    ds = engine.distribute(inputs.dataset_fn(data, cfg.batch_size, True))
    clock = Clock()
    model.fit(
        ds, epochs=plan.epochs, steps_per_epoch=plan.steps_per_epoch, callbacks=[clock], verbose=0
    )
    return clock.steps * cfg.batch_size / clock.seconds


def trainer(args, engine, without=None, **changes):
    """`TrainingRun`'s `fit` with its callbacks (less the one of type
    `without`): images/s."""
    from tf_lars.training.run import TrainingRun

    run = TrainingRun.prepare(config(args, **changes), engine)
    try:
        callbacks = [c for c in run.callbacks() if type(c).__name__ != without]
        clock = Clock()
        run.fit(callbacks + [clock])
    finally:
        run.close()
    return clock.steps * args.batch_size / clock.seconds, [type(c).__name__ for c in callbacks]


def main():
    args = parse()
    from tf_lars.training import engines

    engine = engines.make(config(args))
    _, names = trainer(args, engine)  # (also compiles once: warms the process up)
    cases = {"bare": lambda: bare(args, engine), "trainer": lambda: trainer(args, engine)[0]}
    cases["trainer, --log_trust_ratios"] = lambda: trainer(args, engine, log_trust_ratios=True)[0]
    if args.per_callback:
        for name in dict.fromkeys(names):
            cases[f"trainer without {name}"] = lambda n=name: trainer(args, engine, without=n)[0]
    rounds = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, measure in cases.items():
            rounds[name].append(measure())
    rates = {name: statistics.median(values) for name, values in rounds.items()}
    print(
        f"{args.model}, {args.image_size} px, batch {args.batch_size}, "
        f"{args.steps_per_epoch * (args.epochs - 1)} timed steps; medians of {args.repeats}"
    )
    print("| run | images/s | / bare |")
    print("|---|---|---|")
    for name, value in rates.items():
        print(f"| {name} | {value:.0f} | {value / rates['bare']:.3f} |")
    figures = {"rates": rates, "ratios": {k: v / rates["bare"] for k, v in rates.items()}}
    figures["callbacks"] = names
    print(json.dumps(figures))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
