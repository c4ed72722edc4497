"""The large-batch study: LARS against momentum SGD with the linear scaling
rule and against Nesterov momentum with LARS's schedule, on Fashion-MNIST, at
a fixed epoch budget.

    python tools/large_batch_study.py                # reduced form (2 CPU cores: 30-40 min)
    python tools/large_batch_study.py --form=full15  # 1K..8K, 15 epochs (2 CPU cores: hours)
    python tools/large_batch_study.py --form=full    # 1K..8K, 30 epochs (for a GPU)

Every run is the real training program (`python -m tf_lars.train`) with the
flagfile `flags/fashion_mnist_study.cfg` (ResNet-8, the default run's weight
decay and augmentation), on shards with a class-balanced held-out part of
the training set (built here with `build_fashion_mnist_tfrecords.py
--holdout` when --data_dir has none). Methods:

  baseline  momentum SGD at a small batch (--baseline_batch), step decay;
  sgd       momentum SGD, linear scaling rule (rate = r * B / 256 for each
            trial rate r of --sgd_rates) with linear warmup and step decay
            (Goyal et al.'s warmup 5, decays at 30, 60, 80 of 90 epochs: the
            decays at the same fractions of the budget after warmup);
  lars      LARS with the same warmup and polynomial decay of power 2; each
            trial of --lars_trials is `LR:ETA`, LR the peak rate at batch
            1024, scaled with the square root of the batch size;
  nesterov  Nesterov momentum with the linear scaling rule (--nesterov_rates
            at batch 256) and LARS's warmup and polynomial decay, the same
            coupled weight decay and exclusions (BatchNorm, biases): the
            recipe with which Nado et al. 2021 (arXiv:2102.06356) matched
            LARS on ResNet-50 at batch 32K. Only in the full forms.

Every batch size gets the same number of trials for every method. The
trial with the best accuracy on the held-out images is chosen; its accuracy
on the test images is the one reported. The chosen trial of each method runs
again with more seeds (--seeds in all): at the largest batch in the reduced
form, at every batch size (the baseline's included) in the full forms.

The full forms keep every run's small record (summary.json, history.csv,
flags.json, train.log; not the model files) under docs/study-full*/runs/,
committed with the project, so that the sweep continues on a fresh clone.

BatchNorm statistics are recomputed from 10,000 training images before
every evaluation (`--precise_bn_images` in the flagfile): with 12 steps an
epoch at batch 4096 the moving averages trail the weights too far to judge
either method by them.

Writes to --output_dir: `runs.csv` (every run), `results.md` (the table),
`accuracy_vs_batch.png` and `curves_b<largest>.png`; with --report_only it
writes them from the runs recorded so far and runs nothing (the table then
says which points are still missing). Runs go to --runs_dir,
one folder each; a run whose `summary.json` exists is not run again, so an
interrupted study continues where it stopped. --jobs=N trains N runs at a
time, each in its own process: meant for a GPU, which one small run leaves
mostly idle (on 2 CPU cores, two trainer runs at a time with one thread
each were only 1.09x as fast as one after the other).

--edge_checks then runs, for each chosen trial that is its grid's smallest
or largest rate, one run (seed 1) a grid step further, in <runs_dir>-edges:
reported in a table of their own, they say whether the grid was wide enough
and never change the choice.

--engine=arrays trains in this process instead (with --jobs, in processes
of this tool), on any Keras backend and without TensorFlow (the JAX backend
on a GPU machine): the IDX files are read into memory (--idx_dir), split
with the same class-balanced held-out draw as the shards, fed by
`tf_lars.data.arrays.Batches`, and augmented on the device by Keras layers
(close to, not the same as, the shards' crops);
PreciseBN pools its statistics over training images without augmentation.
The recipe (flagfile, schedule, optimizer, model) is the trainer's own:

    KERAS_BACKEND=jax python tools/large_batch_study.py --form=full --engine=arrays \
        --jobs=4 --idx_dir=fashion-mnist --output_dir=docs/study-gpu
"""

import argparse
import collections
import concurrent.futures
import dataclasses
import json
import math
import os
import subprocess
import sys
import time

from absl import app, flags, logging

from study_report import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREEMPTED_EXIT_CODE = 75  # tf-lars-train's exit status after a SIGTERM and a backup

# At batch B, Fashion-MNIST's 50,000 training images take as many steps an
# epoch as ImageNet's 1,281,167 at about 25.6 B: 1024 is the paper's 32K.
_FULL = dict(batch_sizes=[1024, 2048, 4096, 8192], methods=["sgd", "nesterov", "lars"],
             sgd_rates=["0.05", "0.1", "0.2"], nesterov_rates=["0.05", "0.1", "0.2"],
             lars_trials=["1:0.02", "2:0.02", "4:0.02"], seeds_at_every_batch=True)
FORMS = {
    # Two large batches, 3 epochs, 3 trials per point: 17 runs.
    "reduced": dict(batch_sizes=[1024, 4096], epochs=3, warmup_epochs=0.75,
                    methods=["sgd", "lars"], seeds_at_every_batch=False),
    # Four sizes (ImageNet's 26K to 210K in steps an epoch), three methods,
    # 3 trials each, 2 seeds of every chosen trial: 52 runs.
    "full": dict(_FULL, epochs=30, warmup_epochs=5.0, runs_dir="docs/study-full/runs",
                 output_dir="docs/study-full"),
    # The same grid at half the length, for machines without a GPU.
    "full15": dict(_FULL, epochs=15, warmup_epochs=2.5, runs_dir="docs/study-full15/runs",
                   output_dir="docs/study-full15"),
}
LINEAR_SCALING_BATCH = 256   # the batch size --sgd_rates are given for
LARS_REFERENCE_BATCH = 1024  # the batch size --lars_trials' rates are given for

FLAGS = flags.FLAGS


def define_flags():
    """The tool's flags (defined when it runs, not when tests import it)."""
    flags.DEFINE_enum("form", "reduced", list(FORMS), "Batch sizes and length (see FORMS).")
    flags.DEFINE_list("batch_sizes", None, "Large batch sizes (default: the form's).")
    flags.DEFINE_float("epochs", None, "Epoch budget of every run (default: the form's).")
    flags.DEFINE_float("warmup_epochs", None,
                       "Warmup of the large-batch runs (default: the form's).")
    flags.DEFINE_integer("baseline_batch", 256, "Batch size of the small-batch baseline.")
    flags.DEFINE_list("sgd_rates", ["0.1", "0.2", "0.4"],
                      "SGD trials: rates at batch 256, scaled linearly with the batch.")
    flags.DEFINE_list("lars_trials", ["1:0.02", "2:0.01", "2:0.02"],
                      "LARS trials LR:ETA: peak rate at batch 1024 (square-root scaled) "
                      "and trust coefficient. As many as --sgd_rates.")
    flags.DEFINE_list("nesterov_rates", ["0.05", "0.1", "0.2"],
                      "Nesterov trials (full forms): rates at batch 256, scaled linearly. "
                      "As many as --sgd_rates.")
    flags.DEFINE_integer("seeds", 2, "Seeds of each chosen trial (at the largest batch in "
                         "the reduced form, at every batch size in the full forms).")
    flags.DEFINE_string("data_dir", "data/fashion_mnist_holdout",
                        "Shards with a holdout split (built here when missing).")
    flags.DEFINE_integer("holdout", 10_000, "Held-out training images, when building shards.")
    flags.DEFINE_enum("engine", "trainer", ["trainer", "arrays"], "trainer: each run is "
                      "tf-lars-train on shards; arrays: in memory, any Keras backend.")
    flags.DEFINE_string("idx_dir", None, "Fashion-MNIST's IDX files, for --engine=arrays "
                        "(default: Debian's folder or $TF_LARS_FASHION_MNIST).")
    flags.DEFINE_string("runs_dir", None, "Where each run's folder goes (default: the "
                        "form's, else runs/study, or runs/study-arrays).")
    flags.DEFINE_string("output_dir", None, "Where the CSV, table and plots go (default: "
                        "the form's, else docs/study).")
    flags.DEFINE_list("trainer_flags", [], "More flags for every run (e.g. --cpu_devices=2).")
    flags.DEFINE_boolean("edge_checks", False, "After the sweep, one run (seed 1) a grid "
                         "step past each chosen trial that sits on its grid's edge, in "
                         "<runs_dir>-edges; reported apart, never part of the choice.")
    flags.DEFINE_boolean("dry_run", False, "Print the plan's commands and stop.")
    flags.DEFINE_boolean("report_only", False, "Run nothing: write the CSV, table and plots "
                         "from the runs recorded so far (a study under way, or recorded on "
                         "another machine), saying what is still missing.")
    flags.DEFINE_integer("jobs", 1, "Runs at a time, each its own process (for "
                         "--engine=arrays a process of this tool); on a GPU, small runs "
                         "share it, JAX's memory split between them.", lower_bound=1)
    flags.DEFINE_string("run_spec", None, "(Internal, for --jobs) one run as JSON: train "
                        "it and stop.")


@dataclasses.dataclass(frozen=True)
class Run:
    method: str                # baseline, sgd, nesterov or lars
    batch_size: int
    learning_rate: float       # peak rate of this run
    trust_coefficient: float   # LARS's eta (None for SGD)
    seed: int
    trial: str                 # the trial's value as given (e.g. "0.1", "3:0.01")

    @property
    def name(self):
        eta = f"_eta{self.trust_coefficient:g}" if self.trust_coefficient else ""
        return f"{self.method}_b{self.batch_size}_lr{self.learning_rate:.4g}{eta}_s{self.seed}"

    def flags(self, epochs, warmup_epochs):
        """The trainer flags that make this run what it is."""
        out = [f"--batch_size={self.batch_size}", f"--learning_rate={self.learning_rate!r}",
               f"--epochs={epochs!r}", f"--seed={self.seed}"]
        poly = [f"--warmup_epochs={warmup_epochs!r}", "--schedule=poly", "--poly_power=2"]
        if self.method == "lars":
            return out + ["--optimizer=lars",
                          f"--trust_coefficient={self.trust_coefficient!r}", *poly]
        if self.method == "nesterov":
            return out + ["--optimizer=nesterov", *poly]
        warmup = 0.0 if self.method == "baseline" else warmup_epochs
        # Goyal et al.: warmup 5, decays at 30, 60 and 80 of 90 epochs; the
        # same fractions of the part after warmup, for any budget.
        steps = ",".join(f"{warmup + (epochs - warmup) * f:.4g}"
                         for f in (25 / 85, 55 / 85, 75 / 85))
        return out + ["--optimizer=sgd", f"--warmup_epochs={warmup!r}", "--schedule=step",
                      f"--step_epochs={steps}"]


def trials(method, batch_size, sgd_rates, lars_trials, seed=1, nesterov_rates=()):
    """The runs of one (method, batch size) point: one per trial."""
    if method == "lars":
        runs = []
        for trial in lars_trials:
            lr, eta = (float(v) for v in trial.split(":"))
            scaled = lr * math.sqrt(batch_size / LARS_REFERENCE_BATCH)
            runs.append(Run(method, batch_size, round(scaled, 6), eta, seed, trial))
        return runs
    rates = nesterov_rates if method == "nesterov" else sgd_rates
    return [Run(method, batch_size, round(float(r) * batch_size / LINEAR_SCALING_BATCH, 6),
                None, seed, r) for r in rates]


def first_plan(baseline_batch, batch_sizes, sgd_rates, lars_trials, methods=("sgd", "lars"),
               nesterov_rates=()):
    """Every trial at seed 1: the baseline, then each method at each size."""
    plan = trials("baseline", baseline_batch, sgd_rates, lars_trials)
    for b in batch_sizes:
        for method in methods:
            plan += trials(method, b, sgd_rates, lars_trials, nesterov_rates=nesterov_rates)
    return plan


def choose(results):
    """`{(method, batch): Run}`: the trial with the best held-out accuracy.

    `results` maps each Run to its summary (None when it diverged). Only the
    first seed's runs take part, so extra seeds cannot sway the choice.
    """
    best = {}
    for run, summary in results.items():
        if run.seed != 1 or summary is None:
            continue
        key = (run.method, run.batch_size)
        if key not in best or summary["top1"] > results[best[key]]["top1"]:
            best[key] = run
    return best


def beyond_edges(chosen, plan):
    """Runs one grid step past the edge, one for each chosen trial that sits
    on its grid's edge: seed 1, at the rate a step below the lowest trial (or
    above the highest) of its point, the step being the ratio of that trial to
    its neighbour (LARS: among the trials with the chosen eta). They do not
    take part in the choice; they say whether the grid was wide enough.
    """
    out = []
    for (method, batch), pick in sorted(chosen.items()):
        if method == "baseline":
            continue
        grid = sorted({_base_rate(r.trial) for r in plan if r.seed == 1 and
                       (r.method, r.batch_size, r.trust_coefficient) ==
                       (method, batch, pick.trust_coefficient)})
        rate = _base_rate(pick.trial)
        if len(grid) < 2 or rate not in (grid[0], grid[-1]):
            continue
        step = rate / (grid[1] if rate == grid[0] else grid[-2])
        trial = f"{rate * step:.6g}"
        if method == "lars":
            trial += ":" + pick.trial.split(":")[1]
        out += trials(method, batch, [trial], [trial], nesterov_rates=[trial])
    return out


def _base_rate(trial):
    """A trial's rate as given ("0.1" or LARS's "2:0.02" -> 2.0)."""
    return float(trial.split(":")[0])


def edges_dir_of(runs_dir):
    """Where the runs past the grid's edges go: beside the study's runs."""
    return runs_dir.rstrip("/" + os.sep) + "-edges"


def more_seeds(chosen, batch_sizes, seeds, baseline=False):
    """Runs of the chosen trials at `batch_sizes` with seeds 2..seeds (the
    baseline's too when `baseline`)."""
    return [dataclasses.replace(run, seed=s)
            for (method, batch), run in sorted(chosen.items())
            if (batch in batch_sizes and method != "baseline") or (method == "baseline"
                                                                   and baseline)
            for s in range(2, seeds + 1)]


def planned_total(plan, batch_sizes, every, seeds):
    """How many runs the study makes: `plan`'s trials and the extra seeds."""
    points = {(run.method, run.batch_size) for run in plan}
    seeded = len(points) if every else sum(m != "baseline" for m, b in points
                                           if b == max(batch_sizes))
    return len(plan) + seeded * (seeds - 1)


def by_batch_size(plan):
    """`plan`'s runs in groups: the baseline's, then one per large batch size."""
    groups = {}
    for run in plan:
        key = "baseline" if run.method == "baseline" else run.batch_size
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def sweep(plan, batch_sizes, every, seeds, run_all):
    """`{run: summary}` of the whole study, one batch size at a time.

    The baseline first, then each large batch size in `plan`'s order: its
    trials, then seeds 2..`seeds` of the trials chosen there, so that each
    batch size's comparison is whole, seeds and all, before the next one
    starts (a sweep stopped part-way leaves complete rows, not a grid of
    single seeds). `run_all(runs)` runs them and returns `{run: summary}`.
    """
    seeded_batches = batch_sizes if every else [max(batch_sizes)]
    results = {}
    for group in by_batch_size(plan):
        results.update(run_all(group))
        here = {key: run for key, run in choose(results).items() if run in group}
        results.update(run_all(more_seeds(here, seeded_batches, seeds, baseline=every)))
    return results


def check_args(sgd_rates, lars_trials, batch_sizes, nesterov_rates=None):
    if len(sgd_rates) != len(lars_trials):
        raise ValueError(f"--sgd_rates has {len(sgd_rates)} trials and --lars_trials "
                         f"{len(lars_trials)}: give both methods the same number")
    if nesterov_rates is not None and len(nesterov_rates) != len(sgd_rates):
        raise ValueError(f"--nesterov_rates has {len(nesterov_rates)} trials and "
                         f"--sgd_rates {len(sgd_rates)}: give every method the same number")
    for r in nesterov_rates or ():
        if not _is_number(r):
            raise ValueError(f"--nesterov_rates: {r!r} is not a number")
    for t in lars_trials:
        parts = t.split(":")
        if len(parts) != 2 or not all(_is_number(p) for p in parts):
            raise ValueError(f"--lars_trials: {t!r} is not LR:ETA (e.g. 3:0.01)")
    for r in sgd_rates:
        if not _is_number(r):
            raise ValueError(f"--sgd_rates: {r!r} is not a number")
    for b in batch_sizes:
        if not str(b).isdigit() or int(b) < 1:
            raise ValueError(f"--batch_sizes: {b!r} is not a positive integer")


def _is_number(text):
    try:
        return float(text) > 0
    except ValueError:
        return False


# Running.

def shard_info(data_dir, holdout):
    """The shards' `build.json`, building the shards first when missing."""
    path = os.path.join(data_dir, "build.json")
    if not os.path.exists(path):
        logging.info("building Fashion-MNIST shards with %d held-out images in %s",
                     holdout, data_dir)
        built = subprocess.run(
            [sys.executable, os.path.join(ROOT, "tools", "build_fashion_mnist_tfrecords.py"),
             f"--output_dir={data_dir}", f"--holdout={holdout}"],
            capture_output=True, text=True)
        if built.returncode:
            raise ValueError(built.stderr.strip().splitlines()[-1])
    with open(path) as f:
        info = json.load(f)
    if not info.get("holdout"):
        raise ValueError(f"--data_dir={data_dir} has no holdout split: build one with "
                         "tools/build_fashion_mnist_tfrecords.py --holdout=10000")
    return info


def command(run, run_dir, data_dir, info, epochs, warmup_epochs, extra):
    counts = info["examples"]
    return [sys.executable, "-m", "tf_lars.train", "--flagfile=fashion_mnist_study",
            f"--data_dir={data_dir}", f"--model_dir={run_dir}",
            f"--train_examples={counts['train']}", f"--eval_examples={counts['holdout']}",
            f"--test_examples={counts['validation']}",
            *run.flags(epochs, warmup_epochs), *extra]


def run_logged(cmd, run, run_dir, cwd=None, **env):
    """Runs `cmd` for `run`, its output added to `run_dir/train.log` (a run
    resumed from its backup keeps the log of its first part); the exit code and
    the log's end. A failure other than a NaN stop raises, showing that end."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "train.log"), "a") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT,
                               env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **env), cwd=cwd)
    with open(os.path.join(run_dir, "train.log")) as log:
        tail = log.read()[-2000:]
    if code == PREEMPTED_EXIT_CODE:
        raise RuntimeError(f"run {run.name} was stopped (SIGTERM) and backed up in "
                           f"{run_dir}/backup: run the same command to resume it there")
    if code and "training stopped:" not in tail:
        raise RuntimeError(f"run {run.name} failed (exit {code}); its log, "
                           f"{run_dir}/train.log, ends:\n{tail}")
    return code, tail


def run_trainer(run, run_dir, data_dir, info, epochs, warmup_epochs, extra):
    """--engine=trainer: one run of `tf-lars-train`, its output in `train.log`."""
    code, tail = run_logged(command(run, run_dir, data_dir, info, epochs, warmup_epochs,
                                    extra), run, run_dir, cwd=ROOT)
    if code:  # NaN loss: a result, not an error.
        with open(os.path.join(run_dir, "diverged.txt"), "w") as f:
            f.write(tail.split("training stopped:")[-1].strip() + "\n")


def run_spec_process(run, run_dir, jobs):
    """--jobs with --engine=arrays: `run` in a new process of this tool, same flags."""
    argv = [a for a in sys.argv[1:] if not a.startswith(("--jobs", "--run_spec", "--runs_dir"))]
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--jobs=1",
           f"--runs_dir={os.path.dirname(run_dir)}",  # the study's, or its edges' folder
           f"--run_spec={json.dumps(dataclasses.asdict(run))}"]
    # JAX takes 75% of a GPU's memory by default: share it out instead.
    share = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / jobs:.3f}")
    run_logged(cmd, run, run_dir, XLA_PYTHON_CLIENT_MEM_FRACTION=share)


def execute(run, runs_dir, data_dir, info, epochs, warmup_epochs, extra, in_memory=None,
            jobs=1):
    """Runs one training (unless done before); its summary, or None if it diverged."""
    run_dir = os.path.join(runs_dir, run.name)
    if run not in recorded([run], runs_dir):
        start = time.time()
        if in_memory and jobs > 1:
            run_spec_process(run, run_dir, jobs)
        elif in_memory:
            in_memory(run, run_dir, epochs, warmup_epochs, extra)
        else:
            run_trainer(run, run_dir, data_dir, info, epochs, warmup_epochs, extra)
        logging.info("%s: %.0f s", run.name, time.time() - start)
    done = recorded([run], runs_dir)
    if run not in done:
        raise RuntimeError(f"run {run.name} ended without a summary.json in {run_dir}")
    return done[run]


def recorded(runs, runs_dir):
    """`{run: summary or None (diverged)}` for the `runs` recorded in `runs_dir`."""
    out = {}
    for run in runs:
        run_dir = os.path.join(runs_dir, run.name)
        if os.path.exists(os.path.join(run_dir, "diverged.txt")):
            out[run] = None
        elif os.path.exists(os.path.join(run_dir, "summary.json")):
            with open(os.path.join(run_dir, "summary.json")) as f:
                out[run] = json.load(f)
    return out


def recorded_counts(results, runs_dir):
    """The data's sizes as a recorded run's flags.json gives them (None if none has one)."""
    for run in results:
        path = os.path.join(runs_dir, run.name, "flags.json")
        if os.path.exists(path):
            with open(path) as f:
                cfg = json.load(f)["flags"]
            return dict(examples=dict(train=cfg["train_examples"], holdout=cfg["eval_examples"],
                                      validation=cfg["test_examples"]))
    return None


def execute_all(runs, jobs, *args, counter=None, **kwargs):
    """`{run: execute(run, ...)}`, with up to `jobs` runs at a time.

    `counter`: [runs numbered so far, runs in all], for the log's "run i of n".
    """
    if jobs == 1:
        counter = counter or [0, len(runs)]
        results = {}
        for run in runs:
            counter[0] += 1
            logging.info("run %d of %d: %s", counter[0], counter[1], run.name)
            results[run] = execute(run, *args, **kwargs)
        return results
    # Each run is a process of its own: threads only wait for them.
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        futures = {run: pool.submit(execute, run, *args, jobs=jobs, **kwargs) for run in runs}
        return {run: future.result() for run, future in futures.items()}


class InMemory:
    """--engine=arrays: Fashion-MNIST in memory, each run in this process."""

    # Sizes, and the `small` preset's mean and std (the shards' preset).
    DATA = argparse.Namespace(data_format="fashion_mnist", num_classes=10, image_size=28,
                              channels=1, norm=((127.5,), (127.5,)))

    def __init__(self, idx_dir, holdout):
        from tf_lars.data import fashion_mnist

        try:
            images, labels = fashion_mnist.load("train", idx_dir)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"--idx_dir: {e}") from None
        kept, held = fashion_mnist.split_holdout(labels, holdout)  # the builder's draw
        self.splits = {"train": (images[kept], labels[kept]),
                       "holdout": (images[held], labels[held]),
                       "validation": fashion_mnist.load("test", idx_dir)}
        self.info = dict(examples={k: len(v[1]) for k, v in self.splits.items()})

    def __call__(self, run, run_dir, epochs, warmup_epochs, extra):
        """Trains `run`; writes `history.csv` and `summary.json` as the trainer does."""
        import numpy as np

        import keras
        import tf_lars  # noqa: F401 (registers LARS and the schedules)
        from tf_lars.data import arrays
        from tf_lars.training import engines, precise_bn, recipe
        from tf_lars.training.summary import Summary

        counts = self.info["examples"]
        cfg = trainer_flags(command(run, run_dir, "", self.info, epochs, warmup_epochs,
                                    extra)[3:])
        data = argparse.Namespace(**vars(self.DATA), train_examples=counts["train"],
                                  eval_examples=counts["holdout"])
        plan = recipe.derive(cfg, data, 1)
        keras.backend.clear_session()  # (it resets the dtype policy: set it after)
        keras.utils.set_random_seed(run.seed)
        if cfg.mixed_precision != "none":
            keras.config.set_dtype_policy(cfg.mixed_precision)
        model = recipe.model(cfg, data)
        trained = arrays.with_augmentation(model, seed=run.seed)
        trained.compile(**recipe.compile_args(plan, cfg))

        def batches(split, training):
            images, labels = self.splits[split]
            return arrays.Batches(images, labels, cfg.batch_size if training else plan.eval_batch,
                                  10, training, seed=run.seed)

        callbacks = [keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv")),
                     keras.callbacks.TerminateOnNaN()]
        if plan.precise_bn_steps:  # On training images without augmentation.
            pooled = batches("train", True)
            callbacks.append(precise_bn.PreciseBN(
                model, pooled, min(plan.precise_bn_steps, len(pooled))))
        os.makedirs(run_dir, exist_ok=True)
        start = time.time()
        fitted = trained.fit(
            batches("train", True), epochs=plan.epochs, validation_data=batches("holdout", False),
            verbose=0, callbacks=callbacks)
        seconds = time.time() - start
        if not np.all(np.isfinite(fitted.history["loss"])):
            with open(os.path.join(run_dir, "diverged.txt"), "w") as f:
                f.write("loss is NaN\n")
            return
        # The last epoch's evaluation is the final model's: not run again.
        held = {k: fitted.history[f"val_{k}"][-1] for k in ("accuracy", "top5", "loss")}
        test = trained.evaluate(batches("validation", False), return_dict=True, verbose=0)
        steps = int(keras.ops.convert_to_numpy(trained.optimizer.iterations))
        summary = Summary(top1=held["accuracy"], top5=held["top5"], loss=held["loss"],
                          steps=steps, eval_split="holdout", wall_seconds=seconds,
                          wall_seconds_in_all=seconds,
                          images_per_second=steps * cfg.batch_size / seconds,
                          epochs_run=len(fitted.epoch), backend=keras.backend.backend(),
                          machine=engines.machine(), test_split="validation",
                          test_top1=test["accuracy"], test_top5=test["top5"],
                          test_loss=test["loss"])
        model.save(os.path.join(run_dir, "model.keras"))
        summary.write(run_dir)


def trainer_flags(args):
    """The trainer's config (`TrainConfig`) as `args` set them, flagfiles included."""
    from tf_lars.training import config

    return config.from_args(args)


def batch_norm_note(extra):
    """How the runs' BatchNorm statistics were made (from the study's flags)."""
    cfg = trainer_flags(["--flagfile=fashion_mnist_study", *extra])
    if cfg.precise_bn_images:
        return (f"BatchNorm statistics recomputed from {cfg.precise_bn_images:,} training "
                "images before each evaluation (PreciseBN).")
    return "BatchNorm statistics: the moving averages."


def keras_backend():
    import keras

    return keras.backend.backend()


def main(argv):
    del argv
    form = FORMS[FLAGS.form]
    batch_sizes = FLAGS.batch_sizes or form["batch_sizes"]

    def setting(name):  # A flag given, else the form's value, else the flag's default.
        return FLAGS[name].value if FLAGS[name].present else form.get(name, FLAGS[name].value)

    sgd_rates, lars_trials = setting("sgd_rates"), setting("lars_trials")
    methods = form["methods"]
    nesterov_rates = setting("nesterov_rates") if "nesterov" in methods else None
    try:
        check_args(sgd_rates, lars_trials, batch_sizes, nesterov_rates)
    except ValueError as e:
        sys.exit(f"large_batch_study: error: {e}")
    try:  # The trainer's flags, parsed once here rather than failing in a run.
        bn_note = batch_norm_note(FLAGS.trainer_flags)
    except (flags.Error, ValueError, FileNotFoundError) as e:
        sys.exit(f"large_batch_study: error: --trainer_flags: {e}")
    batch_sizes = sorted(int(b) for b in batch_sizes)
    epochs = FLAGS.epochs or form["epochs"]
    warmup = FLAGS.warmup_epochs if FLAGS.warmup_epochs is not None else form["warmup_epochs"]
    plan = first_plan(FLAGS.baseline_batch, batch_sizes, sgd_rates, lars_trials, methods,
                      nesterov_rates or ())
    # The full forms' records are kept in the repository, one folder per engine.
    suffix = "" if FLAGS.engine == "trainer" else "-arrays"
    runs_dir = FLAGS.runs_dir or (form["runs_dir"] + suffix if "runs_dir" in form else
                                  "runs/study" + suffix)
    output_dir = FLAGS.output_dir or form.get("output_dir", "docs/study")
    every = form["seeds_at_every_batch"]
    if FLAGS.dry_run:
        info = dict(examples=dict(train="N", holdout="N", validation="N"))
        for group in by_batch_size(plan):
            for run in group:
                print(" ".join(command(run, os.path.join(runs_dir, run.name), FLAGS.data_dir,
                                       info, epochs, warmup, FLAGS.trainer_flags)))
            batch = group[0].batch_size
            if (every or batch == max(batch_sizes)) and FLAGS.seeds > 1:
                print(f"# then seeds 2..{FLAGS.seeds} of each method's chosen trial at "
                      f"batch {batch}")
        if FLAGS.edge_checks:
            print(f"# then one run a grid step past each chosen trial on its grid's edge, "
                  f"in {edges_dir_of(runs_dir)}")
        return
    if FLAGS.report_only:
        report_so_far(plan, runs_dir, output_dir, batch_sizes, every, epochs, warmup, bn_note,
                      methods)
        return
    try:
        if FLAGS.engine == "arrays":
            in_memory = InMemory(FLAGS.idx_dir, FLAGS.holdout)
            info = in_memory.info
        else:
            in_memory, info = None, shard_info(FLAGS.data_dir, FLAGS.holdout)
        common = (runs_dir, FLAGS.data_dir, info, epochs, warmup, FLAGS.trainer_flags,
                  in_memory)
        if FLAGS.run_spec:  # One run of a --jobs study, in its own process.
            execute(Run(**json.loads(FLAGS.run_spec)), *common)
            return
        counter = [0, planned_total(plan, batch_sizes, every, FLAGS.seeds)]
        results = sweep(plan, batch_sizes, every, FLAGS.seeds,
                        lambda runs: execute_all(runs, FLAGS.jobs, *common, counter=counter))
        chosen = choose(results)
        past, edges_dir = beyond_edges(chosen, plan), edges_dir_of(runs_dir)
        edges = (execute_all(past, FLAGS.jobs, edges_dir, *common[1:],
                             counter=[0, len(past)]) if FLAGS.edge_checks else
                 recorded(past, edges_dir))
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        sys.exit(f"large_batch_study: error: {e}")
    print(report(results, chosen, runs_dir, output_dir, FLAGS.baseline_batch,
                 batch_sizes, header(info, epochs, warmup, bn_note), methods,
                 epochs=epochs, edges=edges))


def header(info, epochs, warmup, bn_note, progress=""):
    counts = info["examples"]
    engine = ("`tf-lars-train` on TFRecord shards" if FLAGS.engine == "trainer" else
              f"in-memory arrays, Keras {keras_backend()} backend")
    return (f"Fashion-MNIST, ResNet-8 ({engine}), {epochs:g} epochs of the {counts['train']:,} "
            f"training images; trials chosen on {counts['holdout']:,} held-out training "
            f"images, reported on the {counts['validation']:,} test images. "
            f"Large-batch warmup: {warmup:g} epochs. {bn_note} {progress}"
            f"Command: "
            f"`python tools/large_batch_study.py --form={FLAGS.form} "
            f"--engine={FLAGS.engine}`.")


def report_so_far(plan, runs_dir, output_dir, batch_sizes, every, epochs, warmup, bn_note,
                  methods):
    """--report_only: the outputs from the runs recorded in `runs_dir`."""
    results = recorded(plan, runs_dir)
    if not results:
        sys.exit(f"large_batch_study: error: --report_only: no run of this study is recorded "
                 f"in {runs_dir}: run the study first, or give its --runs_dir")
    chosen = choose(results)
    planned = collections.Counter((run.method, run.batch_size) for run in plan)
    total = planned_total(plan, batch_sizes, every, FLAGS.seeds)
    results.update(recorded(more_seeds(chosen, batch_sizes if every else [max(batch_sizes)],
                                       FLAGS.seeds, baseline=every), runs_dir))
    info = recorded_counts(results, runs_dir)
    if info is None:  # (runs of --engine=arrays keep no flags.json)
        info = (InMemory(FLAGS.idx_dir, FLAGS.holdout).info if FLAGS.engine == "arrays" else
                shard_info(FLAGS.data_dir, FLAGS.holdout))
    progress = ("" if len(results) == total else
                f"**Under way: {len(results)} of its {total} runs recorded**; a chosen trial "
                "may change while its point's trials are missing. ")
    edges = recorded(beyond_edges(chosen, plan), edges_dir_of(runs_dir))
    print(report(results, chosen, runs_dir, output_dir, FLAGS.baseline_batch, batch_sizes,
                 header(info, epochs, warmup, bn_note, progress), methods, planned, epochs,
                 edges))


if __name__ == "__main__":
    define_flags()
    app.run(main)
