"""Keras callbacks that watch a large-batch run.

* `TrainingMonitor` writes to TensorBoard what Keras's own callback does
  not: the learning rate at every step, images per second, the input
  pipeline's skipped records and, from a `LARS(track_trust_ratios=True)`,
  each layer's trust ratio, weight norm and gradient norm (a scalar per
  layer and a histogram across layers).
* `TensorBoard` is Keras's callback with its epoch-level charts always
  written (Keras drops them when an epoch ends between two logged steps).
* `StopOnNaN` ends training at the first non-finite loss and says why.
"""

import math
import time
from typing import Any

import keras
import numpy as np

from tf_lars.optimizer import LARS


def inner_optimizer(optimizer):
    """The optimizer inside a `LossScaleOptimizer`, or the optimizer itself."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def learning_rates(optimizer, steps):
    """The learning rate `optimizer` uses after each of `steps`: its schedule
    called once on all of them, or once per step where the schedule takes
    only one step at a time (a branch on the step)."""
    if not steps:
        return []
    schedule = getattr(inner_optimizer(optimizer), "_learning_rate", None)
    if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return [float(keras.ops.convert_to_numpy(optimizer.learning_rate))] * len(steps)
    try:
        rates = keras.ops.convert_to_numpy(schedule(np.asarray(steps, np.int64)))
    except Exception:  # noqa: BLE001 (a schedule written for one step)
        rates = None
    if rates is None or np.shape(rates) != (len(steps),):
        rates = [keras.ops.convert_to_numpy(schedule(step)) for step in steps]
    return [float(rate) for rate in rates]


class TrainingMonitor(keras.callbacks.Callback):
    """Step- and epoch-level TensorBoard scalars of a run (chief only).

    Args:
        log_dir: folder of the event files (Keras's TensorBoard callback
            writes its `train`/`validation` folders beside this one).
        global_batch_size: images per optimizer step, for images/s.
        log_every_steps: steps between images/s and trust-ratio summaries
            (the learning rate is written every step).
        bad_records: a `tf_lars.data.pipeline.BadRecords`, or None.
    """

    def __init__(self, log_dir, global_batch_size, log_every_steps=10, bad_records=None):
        super().__init__()
        self.log_dir = log_dir
        self.global_batch_size = global_batch_size
        self.log_every_steps = max(1, log_every_steps)
        self.bad_records = bad_records
        self._writer: Any = None

    def on_train_begin(self, logs=None):
        import tensorflow as tf  # tf.summary writes the event files

        self._summary = tf.summary
        self._writer = tf.summary.create_file_writer(self.log_dir)
        self._last_step, self._last_time = self._step(), time.perf_counter()
        self._steps = []  # steps whose learning rate is still to be written

    def _step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_step, self._epoch_time = self._step(), time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        # Nothing is read from the model at most steps: the step is counted
        # here, and the learning rates of the steps in between are written
        # with the other summaries, every `log_every_steps` steps.
        step = self._epoch_step + batch + 1
        self._steps.append(step)
        if step - self._last_step >= self.log_every_steps:
            now = time.perf_counter()
            rate = (step - self._last_step) * self.global_batch_size / (now - self._last_time)
            self._last_step, self._last_time = step, now
            with self._writer.as_default(step=step), self._summary.record_if(True):
                self._summary.scalar("images_per_second", rate)
                self._trust_ratios(self.model.optimizer)
            self._write_learning_rates()

    def _write_learning_rates(self):
        """The learning rate after each step counted since the last write
        (Keras's TensorBoard callback records only every `update_freq` steps
        while it trains; these steps choose for themselves)."""
        rates = learning_rates(self.model.optimizer, self._steps)
        with self._writer.as_default(), self._summary.record_if(True):
            for step, rate in zip(self._steps, rates):
                self._summary.scalar("learning_rate", rate, step=step)
        self._steps = []

    def _trust_ratios(self, optimizer):
        lars = inner_optimizer(optimizer)
        if not isinstance(lars, LARS) or not lars.track_trust_ratios:
            return
        stats = lars.trust_ratio_stats()
        for path, (ratio, w_norm, g_norm) in stats.items():
            self._summary.scalar(f"lars/trust_ratio/{path}", ratio)
            self._summary.scalar(f"lars/weight_norm/{path}", w_norm)
            self._summary.scalar(f"lars/grad_norm/{path}", g_norm)
        if stats:
            self._summary.histogram("lars/trust_ratios", np.array([s[0] for s in stats.values()]))

    def on_epoch_end(self, epoch, logs=None):
        self._write_learning_rates()
        seconds = time.perf_counter() - self._epoch_time
        rate = (self._step() - self._epoch_step) * self.global_batch_size / max(seconds, 1e-9)
        with self._writer.as_default(step=self._step()), self._summary.record_if(True):
            self._summary.scalar("epoch_images_per_second", rate)
            if self.bad_records is not None:
                for kind, count in self.bad_records.result().items():
                    self._summary.scalar(f"skipped_records/{kind}", count)
        self._writer.flush()

    def on_train_end(self, logs=None):
        self._write_learning_rates()
        self._writer.close()


class TensorBoard(keras.callbacks.TensorBoard):
    """Keras's `TensorBoard` callback, its epoch-level charts always written.

    With `update_freq=N` Keras records summaries only at steps that are
    multiples of N while it trains, and that condition also silences its own
    epoch-level and evaluation charts (`epoch_loss`, `evaluation_*`) when an
    epoch ends between two multiples: a run of 48 steps an epoch logged every
    10 steps had none. Here they are written at every epoch's end. Takes
    `keras.callbacks.TensorBoard`'s arguments (`log_dir`, `update_freq`, ...).
    """

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        with tf.summary.record_if(True):
            super().on_epoch_end(epoch, logs)

    def on_test_end(self, logs=None):
        import tensorflow as tf

        with tf.summary.record_if(True):
            super().on_test_end(logs)


class SkippedRecords(keras.callbacks.Callback):
    """Says on the console what the input pipelines skipped, when it grows.

    After each epoch: the training split's counts, if they grew. After each
    evaluation: what that pass over the evaluation split skipped, the first
    time it skips any and whenever the number changes. `last_eval` keeps
    the last pass's line for the run's final line.

    Args:
        bad_records: the pipelines' `tf_lars.data.counts.BadRecords`.
        eval_split: the evaluation split's name, as the counts know it.
        printer: prints a line (`print`'s signature). Defaults to `print`.
    """

    def __init__(self, bad_records, eval_split, printer=print):
        super().__init__()
        self.bad_records, self.eval_split, self.printer = bad_records, eval_split, printer
        self._train_seen = 0
        self._eval_before = None
        self._eval_said = None
        self.last_eval = ""

    def _total(self, split):
        if split not in self.bad_records.splits:
            return 0
        return sum(self.bad_records.result(split).values())

    def on_epoch_end(self, epoch, logs=None):
        total = self._total("train")
        if total > self._train_seen:
            self._train_seen = total
            self.printer(
                f"tf-lars-train: epoch {epoch + 1}: skipped so far in train: "
                f"{self.bad_records.describe('train')}",
                flush=True,
            )

    def on_test_begin(self, logs=None):
        self._eval_before = (
            self.bad_records.result(self.eval_split)
            if self.eval_split in self.bad_records.splits
            else None
        )

    def on_test_end(self, logs=None):
        if self.eval_split not in self.bad_records.splits:
            return
        before = self._eval_before or {k: 0 for k in self.bad_records.KINDS}
        now = self.bad_records.result(self.eval_split)
        delta = {k: now[k] - before[k] for k in now}
        self.last_eval = ", ".join(self.bad_records.say(k, n) for k, n in delta.items() if n)
        if self.last_eval and self.last_eval != self._eval_said:
            self._eval_said = self.last_eval
            shards = self.bad_records.describe(self.eval_split)
            self.printer(
                f"tf-lars-train: evaluation skipped in {self.eval_split}: "
                f"{self.last_eval} ({shards})",
                flush=True,
            )


class StopOnNaN(keras.callbacks.Callback):
    """Stops at the first non-finite loss; `message` then says what to try."""

    def __init__(self):
        super().__init__()
        self.message = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            step = int(self.model.optimizer.iterations.numpy())
            self.message = (
                f"the loss became {float(loss)} at step {step}. Likely causes: a learning "
                "rate too high for this batch size (--learning_rate, "
                "--base_learning_rate), a trust coefficient too large "
                "(--trust_coefficient), or a warmup too short (--warmup_epochs)"
            )
            self.model.stop_training = True


__all__ = ["TrainingMonitor", "TensorBoard", "SkippedRecords", "StopOnNaN"]
