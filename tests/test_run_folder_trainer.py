"""The run folder under the trainer: a backup cut by a kill, a full disk, a
second trainer on the folder (the parts: test_run_folder.py)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import helpers
import pytest
from test_training import TINY, wait_for_step

# 20 steps an epoch, 60 in all; a backup every 2 steps.
ARGS = [
    *TINY,
    "--epochs=3",
    "--train_examples=320",
    "--eval_every_epochs=0",
    "--backup_every_steps=2",
]


def last_line(text):
    return text.strip().splitlines()[-1]


def _half_the_weights(folder):
    path = folder / "model.weights.h5"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CUTS = {
    "half the weights file": _half_the_weights,
    "metadata without weights": lambda f: (f / "model.weights.h5").unlink(),
    "weights without metadata": lambda f: (f / "training_metadata.json").unlink(),
}


@pytest.mark.heavy
def test_a_backup_cut_by_a_kill_resumes_from_the_one_before_to_the_same_step_count(tmp_path):
    run = tmp_path / "killed"
    process = helpers.start_trainer(*ARGS, f"--model_dir={run}", output=subprocess.DEVNULL)
    try:
        wait_for_step(run, [process], 10)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        process.kill()
    assert json.loads((run / "run.lock").read_text())["pid"] == process.pid  # left behind
    for cut, damage in CUTS.items():
        copy = tmp_path / cut.replace(" ", "_")
        shutil.copytree(run, copy)
        newest = helpers.backup_metadata(copy)["step"]
        folder = copy / "backup" / f"step-{newest:010d}"
        damage(folder)
        resumed = helpers.run_trainer(*ARGS, f"--model_dir={copy}")
        assert resumed.returncode == 0, (cut, resumed.stderr[-3000:])
        assert f"backup {folder} is damaged (" in resumed.stderr, cut
        assert f"taking over the lock {copy / 'run.lock'}: its holder, process" in resumed.stderr
        summary = json.loads((copy / "summary.json").read_text())
        assert summary["steps"] == 60, cut  # as many as an uninterrupted run
        assert not (copy / "run.lock").exists()
        kept = sorted(p.name for p in (copy / "backup").iterdir())
        assert kept == ["step-0000000058", "step-0000000060"], kept


# Fails the third backup's write as a full disk would.
FULL_DISK = """
import errno, sys
import keras
real, calls = keras.Model.save_weights, []
def save_weights(self, path, *args, **kwargs):
    calls.append(path)
    if len(calls) == 3:
        with open(path, "wb") as f:
            f.write(b"\\x89HDF")
        raise OSError(errno.ENOSPC, "No space left on device", path)
    return real(self, path, *args, **kwargs)
keras.Model.save_weights = save_weights
from tf_lars import train
sys.argv = ["tf-lars-train", *sys.argv[1:]]
train.run()
"""


@pytest.mark.heavy
def test_a_full_disk_ends_the_run_with_one_line_keeping_the_last_backup(tmp_path):
    run = tmp_path / "run"
    failed = subprocess.run(
        [sys.executable, "-c", FULL_DISK, *ARGS, f"--model_dir={run}"],
        env=helpers.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert last_line(failed.stderr) == (
        f"tf-lars-train: error: could not write a backup in {run / 'backup'} (No space left "
        "on device); the last backup (step 4) is intact: free space or fix the folder, then "
        "run the same command to resume"
    )
    assert "Traceback" not in failed.stderr
    assert not (run / "run.lock").exists()
    assert sorted(p.name for p in (run / "backup").iterdir()) == [
        "step-0000000002",
        "step-0000000004",
    ]
    resumed = helpers.run_trainer(*ARGS, f"--model_dir={run}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["steps"] == 60


@pytest.mark.heavy
def test_a_second_trainer_on_the_folder_is_refused_naming_the_first(tmp_path):
    run = tmp_path / "run"
    args = [*ARGS, "--epochs=100", f"--model_dir={run}"]
    first = helpers.start_trainer(*args)
    try:
        wait_for_step(run, [first], 2)
        started = time.time()
        second = helpers.run_trainer(*args, timeout=120)
        seconds = time.time() - started
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert second.returncode == 1
    line = last_line(second.stderr)
    assert line.startswith(
        f"tf-lars-train: error: --model_dir {run} is in use by another trainer (process "
        f"{first.pid} on {socket.gethostname()}, started "
    ), line
    assert line.endswith(
        f"; lock {run / 'run.lock'}): wait for it to end or give another --model_dir"
    )
    assert "Traceback" not in second.stderr
    assert seconds < 60, seconds  # the interpreter and TensorFlow's import, mostly
    print(f"second trainer refused in {seconds:.1f} s")
    # The first trained on, untouched, and gave the folder up when it stopped.
    assert first.returncode == 75, err[-3000:]
    assert not os.path.exists(run / "run.lock")
