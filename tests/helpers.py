"""Helpers shared by the tests: the trainer as a process, weights compared
within a tolerance, an input pipeline built from keywords."""

import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# A run of seconds: synthetic data, 4 steps an epoch.
TINY = [
    "--data_format=synthetic",
    "--model=resnet8",
    "--image_size=16",
    "--num_classes=4",
    "--batch_size=16",
    "--train_examples=64",
    "--eval_examples=32",
    "--seed=3",
    "--warmup_epochs=1",
    "--learning_rate=0.5",
    "--trust_coefficient=0.01",
    "--log_every_steps=1",
    "--verbose=0",
]


def env(**extra):
    """The trainer's environment: quiet TensorFlow, this checkout importable."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT, **extra)


def trainer_command(*args):
    return [sys.executable, "-m", "tf_lars.train", *args]


def start_trainer(*args, output=subprocess.PIPE, **extra_env):
    """`tf-lars-train` with `args`, started (text output piped, or `output`)."""
    return subprocess.Popen(
        trainer_command(*args),
        env=env(**extra_env),
        stdout=output,
        stderr=output,
        text=True,
    )


def run_trainer(*args, timeout=300, **extra_env):
    """`tf-lars-train` with `args`, run to its end: the completed process."""
    return subprocess.run(
        trainer_command(*args),
        env=env(**extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_weights_close(got, want, rtol=1e-5, atol=1e-6):
    """As many arrays in `got` as in `want`, each within the tolerance."""
    assert len(got) == len(want), (len(got), len(want))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def dataset(
    data_dir, split, *, global_batch_size, input_context=None, bad_records=None, skip=0, **spec
):
    """`pipeline.make_dataset` over an `InputSpec` of `data_dir`, `split` and `spec`."""
    from tf_lars.data import pipeline

    return pipeline.make_dataset(
        pipeline.InputSpec(data_dir, split, **spec),
        global_batch_size,
        input_context,
        bad_records,
        skip,
    )


def backup_metadata(run_dir):
    """What the newest whole backup in `run_dir`/backup says (`epoch`,
    `batch`, `step`, `seconds`), or None."""
    from tf_lars.training import checkpoints

    return checkpoints.read_backup(os.path.join(run_dir, "backup"))


def lost_peer_line(run_dir, lost, peers):
    """The trainer's last line when `lost` (e.g. "worker 1 stopped answering
    (UnavailableError)") ended a run of `peers` inside its second epoch."""
    saved = backup_metadata(run_dir)
    return (
        f"tf-lars-train: error: {lost}; the last backup is at step {saved['step']} "
        f"(epoch 1, batch {saved['batch']}) in {os.path.join(run_dir, 'backup')}: start "
        f"all {peers} again with the same command to resume"
    )
