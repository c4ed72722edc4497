"""Checkpoints that survive preemption, written by the chief alone.

Keras 3's `BackupAndRestore` and `ModelCheckpoint` have no notion of a
chief: under MultiWorkerMirroredStrategy every worker writes the same files.
Here only the chief writes the backup; every worker restores from it (so
`--model_dir` must be on storage all workers see, as for any multi-worker
run); the other workers' periodic files go to their scratch folder.
"""

import csv
import json
import os
import time
from typing import Optional

import keras

from tf_lars.training import backups


def _read_text(path):
    fs = backups.files()
    if not fs.exists(path):
        return None
    with fs.GFile(path) as f:
        return f.read()


write_text_atomically = backups.write_text_atomically


# Flags that say where and how a run executes, not what it trains: a
# preempted run may resume with other values of these (on other machines, a
# new data path, more logging). Every other flag must be as it was.
MAY_CHANGE_ON_RESUME = frozenset(
    {
        "data_dir",
        "data_service",
        "strategy",
        "tpu",
        "collective_communication",
        "cpu_devices",
        "model_dir",
        "scratch_dir",
        "log_every_steps",
        "log_trust_ratios",
        "log_noise_scale",
        "noise_scale_every_steps",
        "noise_scale_micro_batches",
        "verbose",
        "cache_eval",
        "jit_compile",
        "steps_per_execution",
        "deterministic",
        "backup_every_steps",
        "keep_backups",
        "force_unlock",
        "coordinator_address",
        "num_processes",
        "process_id",
    }
)


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
            f"flags, or give a new --model_dir"
        )


def read_backup(backup_dir):
    """`{"epoch", "batch", "step"}` of the newest whole backup in
    `backup_dir` (`backups.latest`), or None.

    `epoch` is the epoch the run resumes in and `batch` the batches of it
    already trained (0 for a backup made at an epoch's end); `step` the
    optimizer steps trained in all and `seconds` the training seconds so far,
    over every process the run was resumed through (both absent from
    backups of older versions).
    """
    version = backups.latest(backup_dir)
    if version is None:
        return None
    return {k: v for k, v in version.metadata.items() if k != "weights"}


def resume_position(backup_dir, steps_per_epoch):
    """`(epoch, batch)` a run resumes at from the backup in `backup_dir`: (0, 0)
    without one; a backup made after an epoch's last batch resumes at the next."""
    saved = read_backup(backup_dir) or {}
    epoch, batch = saved.get("epoch", 0), saved.get("batch", 0)
    return (epoch + 1, 0) if batch >= steps_per_epoch else (epoch, batch)


def keep_backed_up_epochs(history_path, backup_dir, steps_per_epoch):
    """Drops the rows of `history_path` (a CSVLogger's table) for the epochs
    a run resuming from `backup_dir` trains again: a run stopped inside an
    epoch logged that part of it, and one killed after an epoch's row but
    before its backup logged the whole epoch. The resumed run then writes
    each epoch's row once (the row of an epoch resumed inside covers the
    batches trained after the stop). Without a backup, every row goes.
    """
    text = _read_text(history_path)
    if not text:
        return
    resumes_in, _ = resume_position(backup_dir, steps_per_epoch)
    lines = text.splitlines(keepends=True)
    column = next(csv.reader(lines[:1])).index("epoch")
    kept = [
        line
        for row, line in zip(csv.reader(lines[1:]), lines[1:])
        if row and int(row[column]) < resumes_in
    ]
    if len(kept) < len(lines) - 1:
        write_text_atomically(history_path, "".join(lines[:1] + kept))


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` whose non-chief workers only read,
    which can also back up inside an epoch.

    Keras's own callback restores the epoch number alone: a backup made
    inside an epoch would replay that epoch from its first batch while the
    optimizer's step count (and so the schedule) went on. Here a backup
    records the batches of the epoch already trained and the step count
    (`read_backup`); the trainer then trains only the rest of that epoch
    and starts its seeded input stream where it stopped. A restarted run
    therefore ends after as many steps as an uninterrupted one. A backup
    also records the training seconds so far, over every process the run
    was resumed through (`seconds_in_all`).

    `every_steps` > 0 also backs up every that many steps, at the run's
    `position` (a `position.Position`); `steps_per_epoch` tells a backup at
    an epoch's last batch to resume in the next epoch.

    Each backup is a new version beside the last `keep` (`backups`): a
    write cut short leaves the previous version to resume, and a failed
    one raises `backups.BackupError`.
    """

    def __init__(
        self,
        backup_dir,
        chief=True,
        every_steps=0,
        steps_per_epoch=None,
        mirror_dir=None,
        position=None,
        keep=2,
        **kwargs,
    ):
        super().__init__(backup_dir, **kwargs)
        self.keep = keep
        self.chief = chief
        self.position = position
        # Under JAX with several processes, saving reads the model's state in
        # collectives that every process must join: the other processes save
        # the same weights here (their scratch folder) when the chief backs up.
        self.mirror_dir = mirror_dir
        self.every_steps = every_steps
        self.steps_per_epoch = steps_per_epoch
        self.resumed_from_epoch = None
        self.resumed_at_step = 0  # the optimizer's iteration count when restored
        self._last_saved = None
        self.final = False  # True: the last backup is made (the run stops inside an epoch)
        self.seconds_before: Optional[float] = (
            0.0  # training seconds of the processes resumed from
        )
        self._clock = None  # when this process first began to train

    def _steps(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _load_model(self):
        first = self._clock is None
        self._restore()
        if first:
            self._clock = time.time()
            if getattr(self.model, "_initial_epoch", None) is not None:
                # (None when the backup was made by a version that did not say)
                self.seconds_before = (read_backup(self.backup_dir) or {}).get("seconds")
        if self.resumed_from_epoch is None:  # (a resumed epoch's rest is a fit of its own)
            self.resumed_from_epoch = getattr(self.model, "_initial_epoch", None)
            if self.resumed_from_epoch is not None:
                self.resumed_at_step = self._steps()

    def _restore(self):
        """Loads the newest whole version (Keras's own `_load_model` reads one
        fixed file)."""
        version = backups.latest(self.backup_dir)
        if version is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(version.weights)
        self.model._initial_epoch = version.metadata["epoch"]

    def on_epoch_end(self, epoch, logs=None):
        self.save(epoch + 1, 0)

    def on_train_batch_end(self, batch, logs=None):
        if self.every_steps and self._steps() % self.every_steps == 0:
            self.save(self.position.epoch, self.position.batch)

    def save(self, epoch, batch):
        """Backs up now: `batch` batches of `epoch` are trained (chief only)."""
        step = self._steps()
        if self.steps_per_epoch and batch >= self.steps_per_epoch:
            epoch, batch = epoch + 1, 0  # (Keras resumes at the epoch it reads)
        if self.final or (epoch, batch, step) == self._last_saved:
            return
        if not self.chief:
            if self.mirror_dir:  # (JAX, several processes: see __init__)
                os.makedirs(self.mirror_dir, exist_ok=True)
                self.model.save_weights(
                    os.path.join(self.mirror_dir, "latest.weights.h5"), overwrite=True
                )
                self._last_saved = (epoch, batch, step)
            return
        # Weights and metadata go into a new version, committed by its
        # metadata (`backups.write`): a backup is never described by metadata
        # of another one, and a cut write leaves the previous one whole.
        metadata = {"epoch": epoch, "batch": batch, "step": step}
        if self.seconds_before is not None and self._clock is not None:
            metadata["seconds"] = round(self.seconds_before + time.time() - self._clock, 3)
        backups.write(
            self.backup_dir,
            lambda path: self.model.save_weights(path, overwrite=True),
            metadata,
            self.keep,
        )
        self._last_saved = (epoch, batch, step)

    def seconds_in_all(self, seconds):
        """The run's training seconds: this process's `seconds` and those of the
        processes it was resumed through (None when a backup does not say)."""
        return None if self.seconds_before is None else self.seconds_before + seconds

    def on_train_end(self, logs=None):
        if self.chief:
            super().on_train_end(logs)


def save_through_rename(path, save):
    """`save(partial)`, then a rename onto `path`: readers (and a run killed
    while saving) see a whole file, the old one or the new."""
    folder, name = os.path.split(path)
    partial = os.path.join(folder, ".partial-" + name)  # (Keras wants the suffix kept)
    save(partial)
    backups.files().rename(partial, path, overwrite=True)


class SaveModel(keras.callbacks.Callback):
    """The full model at `path` after every epoch, through a rename (Keras's
    `ModelCheckpoint` writes the file in place: a kill cuts it)."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        save_through_rename(self.path, lambda p: self.model.save(p, overwrite=True))


def checkpoint_callback(model_dir, chief, scratch_dir):
    """The full model (`checkpoint.keras`) after every epoch, chief-side."""
    folder = model_dir if chief else scratch_dir
    return SaveModel(os.path.join(folder, "checkpoint.keras"))
