"""Checkpoints that survive preemption, written by the chief alone.

Keras 3's `BackupAndRestore` and `ModelCheckpoint` have no notion of a
chief: under MultiWorkerMirroredStrategy every worker writes the same files.
Here only the chief writes the backup; every worker restores from it (so
`--model_dir` must be on storage all workers see, as for any multi-worker
run); the other workers' periodic files go to their scratch folder.
"""

import os

import keras


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

    def _load_model(self):
        super()._load_model()
        self.resumed_from_epoch = getattr(self.model, "_initial_epoch", None)

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
