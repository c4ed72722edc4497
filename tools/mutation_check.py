"""Does the suite catch the bugs that matter? A curated mutation check.

    python tools/mutation_check.py              # every mutation (about 15 min on 2 cores)
    python tools/mutation_check.py --only=3,7   # some of them
    python tools/mutation_check.py --list

Each mutation below is a plausible bug in the pure-Python core (optimizer,
schedules, recipe, preprocessing, pipeline checks, in-memory batches), in the
trainer's plan, flags and position, or in the study's choice, comparison and
claims. For each, the package is copied to a
temporary folder, the one change applied there (the working tree is never
touched), and the fast suites that guard that code are run against the
copy. A mutation is killed when a test fails. Prints a line per mutation
and the kill rate; exits 1 if any survived, naming it.

Why a curated list, not a mutation-testing tool such as mutmut: mutmut
mutates every operator and constant (thousands of mutants here, each a
TensorFlow import and a suite run of 30-90 s on 2 cores: days), and most of
its mutants are equivalent or trivial. These are the bugs that were seen in
peers (the rate outside the momentum buffer, one trust-ratio form for the
other, exclusions by rank inverted) or that silently cost accuracy.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = [
    "tests/test_optimizer.py",
    "tests/test_schedules.py",
    "tests/test_arrays.py",
    "tests/test_keras_conformance.py",
]
DATA = [
    "tests/test_augmentation.py",
    "tests/test_data.py",
    "tests/test_faults.py::test_jpegs_that_tensorflow_decodes_are_never_dropped",
]
STREAM = [
    "tests/test_jax_engine.py::"
    "test_synthetic_batches_reach_fit_once_each_in_order_and_resume_where_they_stopped"
]
STUDY = [
    "tests/test_study.py::test_choice_uses_the_held_out_accuracy_and_first_seed_only",
    "tests/test_study.py::test_the_sweep_finishes_each_batch_size_seeds_and_all_before_the_next",
    "tests/test_study.py::test_differences_are_judged_against_the_seeds_spread",
]

CONFIG = ["tests/test_config.py"]
REPLICAS = ["tests/test_data.py::test_one_host_with_two_replicas_reads_every_record_once_an_epoch"]
FLAGS_REACH = [
    "tests/test_training.py::test_every_optimizer_flag_reaches_the_optimizer_that_trains"
]
RESUME = ["tests/test_faults.py::test_a_resumed_epoch_counts_the_batches_trained_before_it"]
NOISE = ["tests/test_noise_scale.py"]
VERDICTS = [
    "tests/test_study.py::test_the_verdicts_on_methods_above_level_with_and_below_the_baseline"
]
CLAIMS = ["tests/test_study.py::test_a_run_is_claimed_by_one_shard_only"]
FOLDER = ["tests/test_run_folder.py"]

# (what, file, the code as it is, the bug, the suites that should catch it)
MUTATIONS = [
    (
        "LARS: the rate outside the momentum buffer (PyTorch's convention)",
        "tf_lars/optimizer.py",
        "        self.assign(v, momentum * v + step)\n",
        "        step = step / ops.maximum(learning_rate, 1e-30)\n"
        "        self.assign(v, momentum * v + step)\n        v = v * learning_rate\n",
        FAST,
    ),
    (
        "LARS: the paper's ratio without the decay term",
        "tf_lars/optimizer.py",
        "(grad_norm + ops.cast(wd, dtype) * w_norm + eps)",
        "(grad_norm + eps)",
        FAST,
    ),
    (
        "LARS: the paper's form computes the decayed-gradient form",
        "tf_lars/optimizer.py",
        "            denominator_norm = grad_norm\n"
        "            ratio = eta * w_norm / (grad_norm + ops.cast(wd, dtype) * w_norm + eps)",
        "            denominator_norm = g_norm\n            ratio = eta * w_norm / (g_norm + eps)",
        FAST,
    ),
    (
        "LARS: weight decay left out of the step",
        "tf_lars/optimizer.py",
        "        step = scaled_lr * g\n",
        "        step = scaled_lr * grad\n",
        FAST,
    ),
    (
        "LARS: Nesterov ignored",
        "tf_lars/optimizer.py",
        "        if self.nesterov:\n",
        "        if False:\n",
        FAST,
    ),
    (
        "LARS: no guard for zero norms",
        "tf_lars/optimizer.py",
        "        return ops.where(valid, ratio, ops.ones_like(ratio))",
        "        return ratio",
        FAST,
    ),
    (
        "LARS: the rank rule inverted (kernels excluded, biases adapted)",
        "tf_lars/optimizer.py",
        "            return len(variable.shape) <= 1",
        "            return len(variable.shape) > 1",
        FAST,
    ),
    (
        "LARS: LARC's clip not applied",
        "tf_lars/optimizer.py",
        "        if self.clip_trust_ratio:",
        "        if False:",
        FAST,
    ),
    (
        "LARS: sparse gradients' repeated rows not added up before the norms",
        "tf_lars/optimizer.py",
        '    if type(gradient).__name__ == "IndexedSlices":',
        "    if False:",
        FAST,
    ),
    (
        "LARS: every instance named 'lars' (shared variable paths)",
        "tf_lars/optimizer.py",
        "        name: Optional[str] = None,\n",
        '        name: Optional[str] = "lars",\n',
        FAST,
    ),
    (
        "Schedule: warmup one step late",
        "tf_lars/schedules.py",
        "    fraction = step / ops.maximum(ops.cast(warmup_steps, step.dtype), 1.0)",
        "    fraction = (step - 1) / ops.maximum(ops.cast(warmup_steps, step.dtype), 1.0)",
        FAST,
    ),
    (
        "Schedule: polynomial decay of power 1 whatever the power",
        "tf_lars/schedules.py",
        "ops.power(ops.maximum(remaining, 0.0), self.power)",
        "ops.maximum(remaining, 0.0)",
        FAST,
    ),
    (
        "In-memory batches: one order for every epoch",
        "tf_lars/data/arrays.py",
        "            self._order = self._rng.permutation(len(self.images))",
        "            pass",
        FAST,
    ),
    (
        "Synthetic stream (JAX engine): it advances with its reads, so Keras's build read "
        "uses up a batch",
        "tf_lars/training/inputs.py",
        "        start = (self.offset + index) * self.global_batch + self.first\n",
        "        self._reads = getattr(self, '_reads', 0) + 1\n"
        "        start = (self.offset + self._reads - 1) * self.global_batch + self.first\n",
        STREAM,
    ),
    (
        "Augmentation: no flip",
        "tf_lars/data/preprocessing.py",
        "    return tf.image.stateless_random_flip_left_right(image, seed=seed + 1)",
        "    return image",
        DATA,
    ),
    (
        "Augmentation: the centre crop in place of the random crop",
        "tf_lars/data/preprocessing.py",
        "    window = crop_window(tf.io.extract_jpeg_shape(jpeg), boxes, size, preset, seed)",
        "    window = _center_crop_window(tf.io.extract_jpeg_shape(jpeg), size, "
        "preset.eval_crop_padding)",
        DATA,
    ),
    (
        "Pipeline: labels up to num_classes let through",
        "tf_lars/data/pipeline.py",
        "label_ok = tf.logical_and(labels >= 0, labels < spec.num_classes)",
        "label_ok = tf.logical_and(labels >= 0, labels <= spec.num_classes)",
        DATA,
    ),
    (
        "Pipeline: JPEG trailers taken for damage (end marker only in the last 32 bytes)",
        "tf_lars/data/pipeline.py",
        "    return tf.logical_and(starts, tf.cond(lacking, search_the_rest, lambda: near_end))",
        "    return tf.logical_and(starts, near_end)",
        DATA,
    ),
    (
        "Input: the records' boxes left out of the crop",
        "tf_lars/data/pipeline.py",
        "boxes[None, :count]",
        "boxes[None, :0]",
        DATA,
    ),
    (
        "Input: a split without usable records never given up on (the pipeline spins)",
        "tf_lars/data/pipeline.py",
        "give_up = tf.logical_and(usable == 0,",
        "give_up = tf.logical_and(usable < 0,",
        [
            "tests/test_faults.py::test_a_split_without_usable_records_fails_in_seconds_naming_counts"
        ],
    ),
    (
        "Monitoring: each step's learning rate written as the last step's",
        "tf_lars/monitoring.py",
        "    return [float(rate) for rate in rates]",
        "    return [float(rates[-1])] * len(steps)",
        FAST,
    ),
    (
        "Study: trials chosen on the test images (the figure reported)",
        "tools/study/plan.py",
        'if key not in best or summary["top1"] > results[best[key]]["top1"]:',
        'if key not in best or summary["test_top1"] > results[best[key]]["test_top1"]:',
        STUDY,
    ),
    (
        "Study: a difference beyond the spread only when the first method is higher",
        "tools/study/report.py",
        "    if min(a) > max(b) or min(b) > max(a):",
        "    if min(a) > max(b):",
        STUDY,
    ),
    (
        "Study: the seeds wait for the whole grid (a stopped sweep leaves no row complete)",
        "tools/study/plan.py",
        "    for group in by_batch_size(plan):\n        results.update(run_all(group))\n",
        "    for group in [plan]:\n        results.update(run_all(group))\n",
        STUDY,
    ),
    (
        "Plan: the peak rate not scaled with the batch (linear scaling rule lost)",
        "tf_lars/training/recipe.py",
        "cfg.base_learning_rate * batch / cfg.base_batch_size",
        "cfg.base_learning_rate",
        CONFIG,
    ),
    (
        "Input: one host's pipeline reads one replica's share of the shards",
        "tf_lars/data/pipeline.py",
        "ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)",
        "ds = ds.shard(context.num_replicas_in_sync, context.input_pipeline_id)",
        REPLICAS,
    ),
    (
        "Trainer: --clip_trust_ratio never reaches LARS",
        "tf_lars/training/recipe.py",
        "        clip_trust_ratio=cfg.clip_trust_ratio,\n",
        "",
        FLAGS_REACH,
    ),
    (
        "Position: a resumed epoch's batches counted from 0",
        "tf_lars/training/position.py",
        "        self.batch = self.first_batch + batch + 1",
        "        self.batch = batch + 1",
        RESUME,
    ),
    (
        "Study: a method exactly a point below the baseline not within a point",
        "tools/study/report.py",
        "<= points",
        "< points",
        VERDICTS,
    ),
    (
        "Study: a claim that is not exclusive (two shards start one run)",
        "tools/study/runners.py",
        "os.O_CREAT | os.O_EXCL | os.O_WRONLY",
        "os.O_CREAT | os.O_WRONLY",
        CLAIMS,
    ),
    (
        "Noise scale: the two batch sizes swapped in the trace's estimate",
        "tf_lars/noise_scale.py",
        "(1.0 / b_small - 1.0 / b_big)",
        "(1.0 / b_big - 1.0 / b_small)",
        NOISE,
    ),
    (
        "Noise scale: |G_big|^2 from the parts' summed gradient, not their mean",
        "tf_lars/noise_scale.py",
        "(t / micro_batches) ** 2",
        "t**2",
        NOISE,
    ),
    (
        "Noise scale: the loss scale left in the norms",
        "tf_lars/noise_scale.py",
        "np.float64) / loss_scale",
        "np.float64)",
        NOISE,
    ),
    (
        "Noise scale: the measurement in the model's own training call (BatchNorm's state moves)",
        "tf_lars/noise_scale.py",
        "y_pred, _ = model.stateless_call(trainable, frozen, x, training=True)\n            value",
        "y_pred = model(x, training=True)\n            value",
        NOISE,
    ),
    (
        "Backups: the size checked, not the hash (a changed byte resumes)",
        "tf_lars/training/backups.py",
        '(size, sha) == (expected["bytes"], expected["sha256"])',
        'size == expected["bytes"]',
        FOLDER,
    ),
    (
        "Backups: a version trusted once its metadata exists, its weights unchecked",
        "tf_lars/training/backups.py",
        "        why = problem(folder)\n",
        "        why = None if files().exists(os.path.join(folder, METADATA)) else 'cut'\n",
        FOLDER,
    ),
    (
        "Backups: the oldest versions kept instead of the newest",
        "tf_lars/training/backups.py",
        "ours = sorted((n for n in names if n.startswith(PREFIX)), reverse=True)",
        "ours = sorted(n for n in names if n.startswith(PREFIX))",
        FOLDER,
    ),
    (
        "Lock: taken without an exclusive create (two trainers both win)",
        "tf_lars/training/lock.py",
        "os.O_CREAT | os.O_EXCL | os.O_WRONLY",
        "os.O_CREAT | os.O_TRUNC | os.O_WRONLY",
        FOLDER,
    ),
    (
        "Heartbeat: a peer's silence measured from the start, not from its last beat",
        "tf_lars/training/engines/heartbeat.py",
        "self.seen[peer] = (value, now)",
        "self.seen[peer] = (value, self.seen[peer][1])",
        FOLDER,
    ),
]


def run_one(index, mutation, timeout):
    """Applies `mutation` to a copy of the package; True when a test fails.

    `mutation` None runs every suite on the unchanged copy (it must pass).
    """
    what, path, before, after, suites = mutation or (
        "none",
        "tf_lars/__init__.py",
        "",
        "",
        sorted(set(FAST + DATA)),
    )
    with tempfile.TemporaryDirectory(prefix="tf_lars_mutant_") as copy:
        for folder in ("tf_lars", "tests", "flags", "tools"):
            shutil.copytree(
                os.path.join(ROOT, folder),
                os.path.join(copy, folder),
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        for name in ("pytest.ini", "setup.py", "README.md"):
            shutil.copy(os.path.join(ROOT, name), copy)
        target = os.path.join(copy, path)
        with open(target) as f:
            source = f.read()
        if mutation and source.count(before) != 1:
            raise SystemExit(
                f"mutation_check: error: mutation {index} ({what}) no longer "
                f"matches {path}: update it to the code"
            )
        with open(target, "w") as f:
            f.write(source.replace(before, after))
        env = dict(os.environ, PYTHONPATH=copy, TF_CPP_MIN_LOG_LEVEL="3")
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *suites],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return result.returncode not in (0, 5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated mutation numbers (see --list)")
    parser.add_argument("--list", action="store_true", help="list the mutations and stop")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per mutation")
    args = parser.parse_args()
    chosen = range(1, len(MUTATIONS) + 1)
    if args.only:
        try:
            chosen = [int(n) for n in args.only.split(",")]
        except ValueError:
            parser.error(f"--only={args.only!r}: give mutation numbers, e.g. --only=1,4")
        bad = [n for n in chosen if not 1 <= n <= len(MUTATIONS)]
        if bad:
            parser.error(f"--only: no mutation {bad[0]} (1..{len(MUTATIONS)})")
    if args.list:
        for n in chosen:
            print(f"{n:2d}. {MUTATIONS[n - 1][0]}")
        return 0
    start = time.time()
    if run_one(0, None, args.timeout):
        print("mutation_check: error: the suites fail on the unchanged code; fix that first")
        return 2
    print(f" 0. the unchanged code passes ({time.time() - start:.0f} s)", flush=True)
    survived = []
    for n in chosen:
        t = time.time()
        killed = run_one(n, MUTATIONS[n - 1], args.timeout)
        print(
            f"{n:2d}. {'killed  ' if killed else 'SURVIVED'} {MUTATIONS[n - 1][0]} "
            f"({time.time() - t:.0f} s)",
            flush=True,
        )
        if not killed:
            survived.append(n)
    print(
        f"killed {len(chosen) - len(survived)} of {len(chosen)} mutations "
        f"in {time.time() - start:.0f} s" + (f"; survived: {survived}" if survived else "")
    )
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
