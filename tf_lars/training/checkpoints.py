"""Checkpoints that survive preemption, written by the chief alone.

Keras 3's `BackupAndRestore` and `ModelCheckpoint` have no notion of a
chief: under MultiWorkerMirroredStrategy every worker writes the same files.
Here only the chief writes the backup; every worker restores from it (so
`--model_dir` must be on storage all workers see, as for any multi-worker
run); the other workers' periodic files go to their scratch folder.
"""

import json
import os

import keras

# Flags that say where and how a run executes, not what it trains: a
# preempted run may resume with other values of these (on other machines, a
# new data path, more logging). Every other flag must be as it was.
MAY_CHANGE_ON_RESUME = frozenset({
    "data_dir", "strategy", "tpu", "collective_communication", "cpu_devices", "model_dir",
    "scratch_dir", "log_every_steps", "log_trust_ratios", "verbose", "cache_eval",
    "jit_compile", "steps_per_execution", "deterministic"})


def check_resume(model_dir, flag_values):
    """Refuses to resume a run in `model_dir` that other flags started.

    `flag_values` maps the trainer's flag names to their values now; the
    run's own are in `model_dir/flags.json`, written when it started. Raises
    ValueError naming the first flag that differs. Nothing to check when
    `model_dir` holds no backup to resume.
    """
    saved = os.path.join(model_dir, "flags.json")
    if not (os.path.isdir(os.path.join(model_dir, "backup")) and os.path.exists(saved)):
        return
    with open(saved) as f:
        before = json.load(f)["flags"]
    # flags.json went through JSON: compare values as they read back.
    now = json.loads(json.dumps(flag_values, default=str))
    # A flag the run did not know (added since) is not compared.
    for name in sorted(set(before) & set(now)):
        if name in MAY_CHANGE_ON_RESUME or before[name] == now[name]:
            continue
        raise ValueError(
            f"--model_dir {model_dir} holds a run to resume that was started with "
            f"--{name}={before[name]!r}, not {now[name]!r}: resume it with the same "
            f"flags, or give a new --model_dir")


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` whose non-chief workers only read.

    A restarted run resumes at the start of the epoch after the last one
    backed up, with the weights, the optimizer's slots and its iteration
    count as they were, so it ends after as many steps as an uninterrupted run.
    """

    def __init__(self, backup_dir, chief=True, **kwargs):
        super().__init__(backup_dir, **kwargs)
        self.chief = chief
        self.resumed_from_epoch = None
        self.resumed_at_step = 0  # the optimizer's iteration count when restored

    def _load_model(self):
        super()._load_model()
        self.resumed_from_epoch = getattr(self.model, "_initial_epoch", None)
        if self.resumed_from_epoch is not None:
            self.resumed_at_step = int(keras.ops.convert_to_numpy(
                self.model.optimizer.iterations))

    def _save_model(self):
        if self.chief:
            super()._save_model()

    def on_train_end(self, logs=None):
        if self.chief:
            super().on_train_end(logs)


def checkpoint_callback(model_dir, chief, scratch_dir):
    """The full model (`checkpoint.keras`) after every epoch, chief-side."""
    folder = model_dir if chief else scratch_dir
    return keras.callbacks.ModelCheckpoint(os.path.join(folder, "checkpoint.keras"))
