"""The study's command line (`tools/large_batch_study.py`): its flags, and
`main`, which plans, runs (or only reports) and writes the outputs."""

import collections
import dataclasses
import json
import os
import sys

from absl import flags, logging

from study import plan, report, runners, spec
from study.spec import Run

FLAGS = flags.FLAGS


def define_flags():
    """The tool's flags (defined when it runs, not when tests import it)."""
    flags.DEFINE_enum("form", "reduced", list(spec.FORMS), "Batch sizes and length (see FORMS).")
    flags.DEFINE_list("batch_sizes", None, "Large batch sizes (default: the form's).")
    flags.DEFINE_float("epochs", None, "Epoch budget of every run (default: the form's).")
    flags.DEFINE_float(
        "warmup_epochs", None, "Warmup of the large-batch runs (default: the form's)."
    )
    flags.DEFINE_integer("baseline_batch", 256, "Batch size of the small-batch baseline.")
    flags.DEFINE_list(
        "sgd_rates",
        ["0.1", "0.2", "0.4"],
        "SGD trials: rates at batch 256, scaled linearly with the batch.",
    )
    flags.DEFINE_list(
        "lars_trials",
        ["1:0.02", "2:0.01", "2:0.02"],
        "LARS trials LR:ETA: peak rate at batch 1024 (square-root scaled) "
        "and trust coefficient. As many as --sgd_rates.",
    )
    flags.DEFINE_list(
        "nesterov_rates",
        ["0.05", "0.1", "0.2"],
        "Nesterov trials (full forms): rates at batch 256, scaled linearly. "
        "As many as --sgd_rates.",
    )
    flags.DEFINE_integer(
        "seeds",
        2,
        "Seeds of each chosen trial (at the largest batch in "
        "the reduced form, at every batch size in the full forms).",
    )
    flags.DEFINE_string(
        "data_dir",
        "data/fashion_mnist_holdout",
        "Shards with a holdout split (built here when missing).",
    )
    flags.DEFINE_integer("holdout", 10_000, "Held-out training images, when building shards.")
    flags.DEFINE_enum(
        "engine",
        "trainer",
        ["trainer", "arrays"],
        "trainer: each run is tf-lars-train on shards; arrays: in memory, any Keras backend.",
    )
    flags.DEFINE_string(
        "idx_dir",
        None,
        "Fashion-MNIST's IDX files, for --engine=arrays "
        "(default: Debian's folder or $TF_LARS_FASHION_MNIST).",
    )
    flags.DEFINE_string(
        "runs_dir",
        None,
        "Where each run's folder goes (default: the "
        "form's, else runs/study, or runs/study-arrays).",
    )
    flags.DEFINE_string(
        "output_dir",
        None,
        "Where the CSV, table and plots go (default: the form's, else docs/study).",
    )
    flags.DEFINE_list("trainer_flags", [], "More flags for every run (e.g. --cpu_devices=2).")
    flags.DEFINE_boolean(
        "edge_checks",
        False,
        "After the sweep, one run (seed 1) a grid "
        "step past each chosen trial that sits on its grid's edge, in "
        "<runs_dir>-edges; reported apart, never part of the choice.",
    )
    flags.DEFINE_boolean(
        "noise_scale",
        False,
        "After a sweep: run the chosen trial (seed 1) of the baseline and of LARS "
        "at the smallest large batch again with --log_noise_scale, in "
        "<runs_dir>-noise, and report B_simple through training beside the "
        "study's limits.",
    )
    flags.DEFINE_boolean("dry_run", False, "Print the plan's commands and stop.")
    flags.DEFINE_boolean(
        "report_only",
        False,
        "Run nothing: write the CSV, table and plots "
        "from the runs recorded so far (a study under way, or recorded on "
        "another machine), saying what is still missing.",
    )
    flags.DEFINE_integer(
        "jobs",
        1,
        "Runs at a time, each its own process (for "
        "--engine=arrays a process of this tool); on a GPU, small runs "
        "share it, JAX's memory split between them.",
        lower_bound=1,
    )
    flags.DEFINE_string(
        "shard",
        None,
        "I/N: this machine's share of a sweep that N "
        "machines share through --runs_dir (a Slurm array's or an indexed "
        "Job's index I, from 0); each run is claimed by one machine.",
    )
    flags.DEFINE_float(
        "shard_poll_seconds",
        30.0,
        "With --shard: how often to look for the other shards' runs this one waits for.",
        lower_bound=0.1,
    )
    flags.DEFINE_string(
        "run_spec", None, "(Internal, for --jobs) one run as JSON: train it and stop."
    )


class Settings:
    """The flags as the study reads them: a flag given, else the form's value,
    else the flag's default."""

    def __init__(self):
        self.form = spec.FORMS[FLAGS.form]
        self.methods = self.form["methods"]
        self.trials = {
            name: self.value(name) for name in ("sgd_rates", "lars_trials", "nesterov_rates")
        }
        plan.check_args(self.trials, self.methods, FLAGS.batch_sizes or self.form["batch_sizes"])
        self.batch_sizes = sorted(int(b) for b in FLAGS.batch_sizes or self.form["batch_sizes"])
        self.epochs = FLAGS.epochs or self.form["epochs"]
        self.warmup = (
            FLAGS.warmup_epochs if FLAGS.warmup_epochs is not None else self.form["warmup_epochs"]
        )
        self.every = self.form["seeds_at_every_batch"]
        self.wider = self.form.get("wider_trials", {})
        self.plan = plan.first_plan(
            FLAGS.baseline_batch, self.batch_sizes, self.trials, self.methods, self.wider
        )
        # The full forms' records are kept in the repository, one folder per engine.
        suffix = "" if FLAGS.engine == "trainer" else "-arrays"
        self.runs_dir = FLAGS.runs_dir or (
            self.form["runs_dir"] + suffix if "runs_dir" in self.form else "runs/study" + suffix
        )
        self.output_dir = FLAGS.output_dir or self.form.get("output_dir", "docs/study")
        self.shard = parse_shard(FLAGS.shard)
        # Where --noise_scale measures: the baseline, and LARS at the smallest large batch.
        self.noise_points = [("baseline", FLAGS.baseline_batch), ("lars", self.batch_sizes[0])]

    def value(self, name):
        return FLAGS[name].value if FLAGS[name].present else self.form.get(name, FLAGS[name].value)

    @property
    def seeded_batches(self):
        return self.batch_sizes if self.every else [max(self.batch_sizes)]


def parse_shard(text):
    """`--shard=I/N` as (I, N), or None."""
    if text is None:
        return None
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise ValueError(f"--shard={text}: give I/N with 0 <= I < N, e.g. --shard=0/4")
    return index, count


def edges_dir_of(runs_dir):
    """Where the runs past the grid's edges go: beside the study's runs."""
    return runs_dir.rstrip("/" + os.sep) + "-edges"


def noise_dir_of(runs_dir):
    """Where the noise-scale runs go: beside the study's runs."""
    return runs_dir.rstrip("/" + os.sep) + "-noise"


def run_noise_scale(s):
    """--noise_scale: the noise-scale runs of the sweep's recorded choices."""
    results = runners.recorded(s.plan, s.runs_dir)
    runs = plan.noise_scale_runs(plan.choose(results), s.noise_points)
    if not runs:
        raise ValueError(
            f"--noise_scale: no chosen trial of the points {s.noise_points} "
            f"is recorded in {s.runs_dir}: run the sweep first"
        )
    setting = setting_of(s).elsewhere(noise_dir_of(s.runs_dir))
    for i, run in enumerate(runs):
        every = plan.noise_scale_every(run, s.epochs, setting.info["examples"]["train"])
        measuring = dataclasses.replace(
            setting,
            extra=[*setting.extra, "--log_noise_scale", f"--noise_scale_every_steps={every}"],
        )
        runners.execute_all([run], measuring, counter=[i, len(runs)])


def trainer_config(extra):
    """The trainer's config of the study's flagfile and `extra` flags."""
    from tf_lars.training import config

    return config.from_args(["--flagfile=fashion_mnist_study", *extra])


def batch_norm_note(extra):
    """How the runs' BatchNorm statistics were made (from the study's flags)."""
    cfg = trainer_config(extra)
    if cfg.precise_bn_images:
        return (
            f"BatchNorm statistics recomputed from {cfg.precise_bn_images:,} training "
            "images before each evaluation (PreciseBN)."
        )
    return "BatchNorm statistics: the moving averages."


def keras_backend():
    import keras

    return keras.backend.backend()


def header(info, s, bn_note, progress=""):
    counts = info["examples"]
    engine = (
        "`tf-lars-train` on TFRecord shards"
        if FLAGS.engine == "trainer"
        else f"in-memory arrays, Keras {keras_backend()} backend"
    )
    return (
        f"Fashion-MNIST, ResNet-8 ({engine}), {s.epochs:g} epochs of the "
        f"{counts['train']:,} training images; trials chosen on {counts['holdout']:,} "
        f"held-out training images, reported on the {counts['validation']:,} test images. "
        f"Large-batch warmup: {s.warmup:g} epochs. {bn_note} {progress}"
        f"Command: `python tools/large_batch_study.py --form={FLAGS.form} "
        f"--engine={FLAGS.engine}`."
    )


def dry_run(s):
    """--dry_run: the plan's commands."""
    info = dict(examples=dict(train="N", holdout="N", validation="N"))
    setting = runners.Setting(
        s.runs_dir, FLAGS.data_dir, info, s.epochs, s.warmup, FLAGS.trainer_flags
    )
    for group in plan.by_batch_size(s.plan):
        for run in group:
            print(" ".join(runners.command(run, os.path.join(s.runs_dir, run.name), setting)))
        batch = group[0].batch_size
        if (s.every or batch == max(s.batch_sizes)) and FLAGS.seeds > 1:
            print(f"# then seeds 2..{FLAGS.seeds} of each method's chosen trial at batch {batch}")
    if FLAGS.edge_checks:
        print(
            f"# then one run a grid step past each chosen trial on its grid's edge, "
            f"in {edges_dir_of(s.runs_dir)}"
        )


def setting_of(s):
    """What every run shares: the data (building shards when missing), the flags."""
    if FLAGS.engine == "arrays":
        from study.in_memory import InMemory

        in_memory = InMemory(FLAGS.idx_dir, FLAGS.holdout)
        info = in_memory.info
    else:
        in_memory, info = None, runners.shard_info(FLAGS.data_dir, FLAGS.holdout)
    return runners.Setting(
        s.runs_dir,
        FLAGS.data_dir,
        info,
        s.epochs,
        s.warmup,
        FLAGS.trainer_flags,
        in_memory,
        FLAGS.jobs,
        s.shard,
        FLAGS.shard_poll_seconds,
    )


def run_study(s, bn_note):
    """Runs the sweep (this shard's share of it), then the edge checks; the report."""
    setting = setting_of(s)
    if FLAGS.run_spec:  # One run of a --jobs study, in its own process.
        runners.execute(Run(**json.loads(FLAGS.run_spec)), setting)
        return None
    counter = [0, plan.planned_total(s.plan, s.batch_sizes, s.every, FLAGS.seeds)]
    results = plan.sweep(
        s.plan,
        s.batch_sizes,
        s.every,
        FLAGS.seeds,
        lambda runs: runners.execute_all(runs, setting, counter=counter),
    )
    chosen = plan.choose(results)
    past, edges_dir = plan.beyond_edges(chosen, s.plan), edges_dir_of(s.runs_dir)
    edges = (
        runners.execute_all(past, setting.elsewhere(edges_dir), counter=[0, len(past)])
        if FLAGS.edge_checks
        else runners.recorded(past, edges_dir)
    )
    if s.shard and s.shard[0] != 0:
        return f"large_batch_study: shard {FLAGS.shard} done; shard 0 writes the report"
    return write_report(s, results, chosen, header(setting.info, s, bn_note), edges)


def write_report(s, results, chosen, head, edges, planned=None):
    """The outputs (CSV, table, plots) in the study's output folder; the table."""
    noise = runners.recorded(
        plan.noise_scale_runs(chosen, s.noise_points),
        noise_dir_of(s.runs_dir),
    )
    return report.report(
        results,
        chosen,
        s.runs_dir,
        s.output_dir,
        FLAGS.baseline_batch,
        s.batch_sizes,
        head,
        s.methods,
        planned,
        s.epochs,
        edges,
        noise,
    )


def report_so_far(s, bn_note):
    """--report_only: the outputs from the runs recorded in the runs folder."""
    results = runners.recorded(s.plan, s.runs_dir)
    if not results:
        sys.exit(
            f"large_batch_study: error: --report_only: no run of this study is recorded "
            f"in {s.runs_dir}: run the study first, or give its --runs_dir"
        )
    chosen = plan.choose(results)
    planned = collections.Counter((run.method, run.batch_size) for run in s.plan)
    total = plan.planned_total(s.plan, s.batch_sizes, s.every, FLAGS.seeds)
    results.update(
        runners.recorded(
            plan.more_seeds(chosen, s.seeded_batches, FLAGS.seeds, baseline=s.every), s.runs_dir
        )
    )
    info = runners.recorded_counts(results, s.runs_dir)
    if info is None:  # (runs of --engine=arrays keep no flags.json)
        info = setting_of(s).info
    progress = (
        ""
        if len(results) == total
        else f"**Under way: {len(results)} of its {total} runs recorded**; a chosen trial "
        "may change while its point's trials are missing. "
    )
    edges = runners.recorded(plan.beyond_edges(chosen, s.plan), edges_dir_of(s.runs_dir))
    return write_report(s, results, chosen, header(info, s, bn_note, progress), edges, planned)


def main(argv):
    del argv
    try:
        s = Settings()
    except ValueError as e:
        sys.exit(f"large_batch_study: error: {e}")
    try:  # The trainer's flags, parsed once here rather than failing in a run.
        bn_note = batch_norm_note(FLAGS.trainer_flags)
    except (flags.Error, ValueError, FileNotFoundError) as e:
        sys.exit(f"large_batch_study: error: --trainer_flags: {e}")
    if FLAGS.dry_run:
        return dry_run(s)
    if FLAGS.report_only:
        print(report_so_far(s, bn_note))
        return None
    if FLAGS.noise_scale:
        try:
            run_noise_scale(s)
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            sys.exit(f"large_batch_study: error: {e}")
        print(report_so_far(s, bn_note))
        return None
    try:
        text = run_study(s, bn_note)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        sys.exit(f"large_batch_study: error: {e}")
    if text:
        print(text)
    logging.info("done")
    return None
