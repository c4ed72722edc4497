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
  * trainer without callbacks: `TrainingRun`'s `fit`, model and input with
    none of its callbacks (what is left is not the callbacks' doing).
Each is timed over the epochs after its first (compilation and the first
backup excluded), inside the epochs (the steps, with the callbacks' work at
each step) and at their ends (the callbacks' work at each epoch's end: a
cost that a longer epoch spreads thinner). Prints images/s of each and its
ratio to bare, both over whole epochs and inside them, the seconds of an
epoch's end, and JSON (--out writes it).

With --per_callback (the default), each trainer run also times every hook
of each of its callbacks as Keras calls it: the milliseconds a callback
adds to a step (its batch hooks) and the seconds it adds to an epoch's end
(its epoch hooks), medians over the rounds.
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
    p.add_argument(
        "--per_callback",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time each callback's hooks in the trainer's runs",
    )
    p.add_argument("--out", default=None)
    return p.parse_args()


class Clock(keras.callbacks.Callback):
    """When each epoch began and ended, and when training ended. First in the
    list of callbacks and without a hook at each batch, so that a bare `fit`
    keeps Keras's asynchronous dispatch of callbacks."""

    def __init__(self):
        super().__init__()
        self.begins, self.ends = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.begins.append(time.perf_counter())

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append(time.perf_counter())

    def on_train_end(self, logs=None):
        self.finished = time.perf_counter()

    def figures(self, steps_per_epoch, batch_size):
        """Over the epochs after the first: images/s with the epochs' ends,
        images/s inside them (the steps and the callbacks' work at each step),
        and the seconds of an epoch's end (the callbacks' work then)."""
        inside = sum(e - b for b, e in zip(self.begins[1:], self.ends[1:]))
        between = [b - e for e, b in zip(self.ends[1:], self.begins[2:] + [self.finished])]
        images = (len(self.ends) - 1) * steps_per_epoch * batch_size
        return {
            "rate": images / (inside + sum(between)),
            "rate_inside": images / inside,
            "epoch_end_seconds": statistics.mean(between),
        }


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
    return clock.figures(plan.steps_per_epoch, cfg.batch_size)


class HookTimes:
    """Seconds spent in each callback's hooks, by callback: its batch hooks
    (a step's share) and its epoch hooks (an epoch end's share), over the
    epochs after the first."""

    BATCH = ("on_train_batch_begin", "on_train_batch_end")
    EPOCH = ("on_epoch_begin", "on_epoch_end")

    def __init__(self, callbacks):
        self.seconds = {}
        self.timing = False
        for callback in callbacks:
            name = type(callback).__name__
            self.seconds.setdefault(name, {"batch": 0.0, "epoch": 0.0})
            for hook in self.BATCH + self.EPOCH:
                kind = "batch" if hook in self.BATCH else "epoch"
                setattr(callback, hook, self._timed(getattr(callback, hook), name, kind))

    def _timed(self, hook, name, kind):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return hook(*args, **kwargs)
            finally:
                if self.timing:
                    self.seconds[name][kind] += time.perf_counter() - start

        return timed

    def start(self):
        """Times from now (a callback at each epoch's end calls it)."""
        self.timing = True

    def per_step_and_epoch(self, steps, epochs):
        """`{callback: {"ms_per_step", "s_per_epoch_end"}}`."""
        return {
            name: {
                "ms_per_step": 1e3 * times["batch"] / steps,
                "s_per_epoch_end": times["epoch"] / epochs,
            }
            for name, times in self.seconds.items()
        }


class StartTiming(keras.callbacks.Callback):
    def __init__(self, hooks):
        super().__init__()
        self.hooks = hooks

    def on_epoch_end(self, epoch, logs=None):
        self.hooks.start()  # (last in the list: after the first epoch's end)


def trainer(args, engine, per_callback=False, with_callbacks=True, **changes):
    """`TrainingRun`'s `fit` with its callbacks (or none): `Clock.figures`,
    with each callback's `HookTimes` where `per_callback`."""
    from tf_lars.training.run import TrainingRun

    run = TrainingRun.prepare(config(args, **changes), engine)
    try:
        callbacks = run.callbacks()  # (also what `fit` needs to know)
        callbacks = callbacks if with_callbacks else []
        clock = Clock()
        extra = []
        if per_callback:
            hooks = HookTimes(callbacks)
            extra = [StartTiming(hooks)]
        run.fit([clock] + callbacks + extra)
    finally:
        run.close()
    figures = clock.figures(args.steps_per_epoch, args.batch_size)
    if per_callback:
        epochs = args.epochs - 1
        figures["callbacks"] = hooks.per_step_and_epoch(epochs * args.steps_per_epoch, epochs)
    return figures


def medians(rounds):
    """Medians of each figure over the rounds (nested dicts of numbers)."""
    first = rounds[0]
    if isinstance(first, dict):
        return {k: medians([r[k] for r in rounds]) for k in first}
    return statistics.median(rounds)


def main():
    args = parse()
    from tf_lars.training import engines

    engine = engines.make(config(args))
    trainer(args, engine)  # (compiles once: warms the process up)
    cases = {
        "bare": lambda: bare(args, engine),
        "trainer without callbacks": lambda: trainer(args, engine, with_callbacks=False),
        "trainer": lambda: trainer(args, engine, args.per_callback),
        "trainer, --log_trust_ratios": lambda: trainer(
            args, engine, args.per_callback, log_trust_ratios=True
        ),
    }
    rounds = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, measure in cases.items():
            rounds[name].append(measure())
    figures = {name: medians(values) for name, values in rounds.items()}
    report(args, figures)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=1)


def report(args, figures):
    base = figures["bare"]
    print(
        f"{args.model}, {args.image_size} px, batch {args.batch_size}, "
        f"{args.epochs - 1} timed epochs of {args.steps_per_epoch} steps; "
        f"medians of {args.repeats} rounds"
    )
    print("| run | images/s | / bare | inside epochs, / bare | an epoch's end (s) |")
    print("|---|---|---|---|---|")
    for name, f in figures.items():
        print(
            f"| {name} | {f['rate']:.0f} | {f['rate'] / base['rate']:.3f} "
            f"| {f['rate_inside'] / base['rate_inside']:.3f} | {f['epoch_end_seconds']:.3f} |"
        )
    step_ms = 1e3 * args.batch_size / base["rate_inside"]
    for name, f in figures.items():
        if "callbacks" not in f:
            continue
        print(f"\n{name}: each callback's hooks (a bare step takes {step_ms:.1f} ms)")
        print("| callback | ms a step | s an epoch's end |")
        print("|---|---|---|")
        for callback, t in f["callbacks"].items():
            print(f"| {callback} | {t['ms_per_step']:.3f} | {t['s_per_epoch_end']:.4f} |")
    print(json.dumps(figures))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
