"""Where a run is: the epoch, and the batches of it trained.

One callback keeps it, first in the run's list, and the callbacks that need
it (backups, the stop at the run's last step, the stop after a SIGTERM) read
it there instead of each counting batches on their own. The step count is
the optimizer's `iterations`.
"""

from __future__ import annotations

from typing import Any, Optional

import keras


class Position(keras.callbacks.Callback):
    """The run's place in its epochs.

    Attributes:
        epoch: the epoch in progress (0-based, as Keras counts).
        batch: batches of that epoch trained so far, in this `fit` and before
            it (a run resumed inside an epoch trains its rest in a `fit` of its
            own, starting at `first_batch`).
        first_batch: batches of the first epoch trained before this `fit`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0
        self.batch = 0
        self.first_batch = 0

    def resume_inside(self, batch: int) -> None:
        """The next `fit` trains the rest of an epoch of which `batch` are done."""
        self.first_batch = self.batch = batch

    def on_epoch_begin(self, epoch: int, logs: Optional[dict[str, Any]] = None) -> None:
        self.epoch = epoch
        self.batch = self.first_batch

    def on_train_batch_end(self, batch: int, logs: Optional[dict[str, Any]] = None) -> None:
        self.batch = self.first_batch + batch + 1

    def on_epoch_end(self, epoch: int, logs: Optional[dict[str, Any]] = None) -> None:
        self.first_batch = 0


class StopAtStep(keras.callbacks.Callback):
    """Ends training after `total_steps` batches, inside an epoch if need be.

    `fit` runs whole epochs of `steps_per_epoch` batches; a run whose length
    (--train_steps) is not a whole number of epochs stops in its last one.
    """

    def __init__(self, total_steps: int, steps_per_epoch: int, position: Position) -> None:
        super().__init__()
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.position = position

    def on_train_batch_end(self, batch: int, logs: Optional[dict[str, Any]] = None) -> None:
        done = self.position.epoch * self.steps_per_epoch + self.position.batch
        if done >= self.total_steps:
            self.model.stop_training = True
