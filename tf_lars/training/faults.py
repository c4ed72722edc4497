"""What the trainer does when a run is stopped or its input fails.

* `Preemption`: SIGTERM (the notice preemptible VMs and TPU hosts get) makes
  the run back up at the end of the step in progress and stop; under
  multi-worker runs the workers first agree on that step, so that they stop
  together: through TensorFlow's coordination service (tf.distribute), or
  JAX's preemption sync manager (several JAX processes).
* `explain`: one line for the errors a user can act on (bad input under
  `--strict_data`, a split with no usable record, a worker that stopped
  answering), naming the flag or file and what to do.
* `worker_failure`: which peer a collective's or coordination error blames.
"""

import errno
import re
import signal
import threading

import keras

from tf_lars.training import backups

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: start the same command again.
_STOP_KEY = "tf_lars_stop_at_step"


class Preemption(keras.callbacks.Callback):
    """On SIGTERM: back up at the end of a step, then stop training.

    Args:
        backup: the run's `checkpoints.BackupAndRestore`.
        coordination: under multi-worker runs, TensorFlow's eager context
            (its coordination service's key-value store carries the step at
            which every worker stops); None for one process.
        margin: steps between the notice and the stop, for the other workers
            to hear of it (each step waits for every worker anyway).
        sync_point: under several JAX processes,
            `jax.experimental.multihost_utils.reached_preemption_sync_point`:
            JAX's own SIGTERM handler passes the notice to every process and
            they agree on a call count (one past the largest any had reached);
            this callback asks it after every batch and installs no handler.
    """

    def __init__(self, backup, coordination=None, margin=2, sync_point=None):
        super().__init__()
        self.backup = backup
        self.coordination = coordination
        self.sync_point = sync_point
        self.margin = margin if coordination is not None else 0
        self._calls = 0  # batches ended in this process (the sync point counts them)
        self.stop_at = None  # the agreed step
        self.stopped_at = None  # the step backed up when stopping
        self._previous = None

    def _steps(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_begin(self, logs=None):
        if self.sync_point is not None:
            return  # (JAX's handler hears SIGTERM; a Python one would replace it)
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        if self.coordination is not None and self.stop_at is None:
            threading.Thread(target=self._listen, daemon=True).start()

    def _on_sigterm(self, signum, frame):
        step = self._steps() + self.margin
        if self.coordination is None:
            self.stop_at = step
            return
        try:  # The first worker to hear it sets the step for all.
            self.coordination.set_config_key_value(_STOP_KEY, str(step))
        except Exception:  # noqa: BLE001 (set already, by another worker)
            pass

    def _listen(self):
        """Waits (a thread) for any worker's notice: the step to stop at."""
        try:
            self.stop_at = int(self.coordination.get_config_key_value(_STOP_KEY))
        except Exception:  # noqa: BLE001 (the service ended with the run)
            pass

    def on_train_batch_end(self, batch, logs=None):
        if self.sync_point is not None:
            # Every process calls it after every batch, from the same start.
            self._calls += 1
            if not self.sync_point(self._calls):
                return
        elif self.stop_at is None or self._steps() < self.stop_at:
            return
        position = self.backup.position
        self.backup.save(position.epoch, position.batch)
        self.backup.final = True  # (Keras still ends the epoch: not a whole one)
        self.stopped_at = self._steps()
        self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


_TASK = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")
_PEER_FAULTS = (
    "unhealthy",
    "heartbeat",
    "Socket closed",
    "failed to connect",
    "Connection reset",
    "connection refused",
    "unavailable",
    "UNAVAILABLE",
    "peer",
    "Collective ops is aborted",
    "cluster",
)


def worker_failure(error, this_task):
    """The task (e.g. 'worker 1') a collective or coordination `error` blames,
    other than `this_task` ('worker 0'); '' when it names none; None when the
    error is not a lost peer."""
    text = str(error)
    if not any(word in text for word in _PEER_FAULTS):
        return None
    tasks = [f"{job} {task}" for job, task in _TASK.findall(text)]
    others = [t for t in dict.fromkeys(tasks) if t != this_task]
    return others[0] if others else ""


def explain(error, data, engine, bad_records, backup_dir):
    """The one line for an error the user can act on, or None.

    Input faults (`pipeline.explain`: bad records under --strict_data, a
    split with no usable record) name the shard and the flags; a write that
    failed (a backup, a full disk) names the file; a peer that stopped
    answering (the engine judges the error) names it. Both say where the
    last backup stands.
    """
    if isinstance(error, (OSError, backups.BackupError)):
        return _write_failure(error, backup_dir)
    if data.data_format != "synthetic":  # (synthetic data has no shards to blame)
        from tf_lars.data import pipeline, schema

        offset = data.label_offset
        if offset is None:
            offset = schema.get(data.schema).label_offset
        line = pipeline.explain(error, data.data_dir, data.num_classes, offset, bad_records)
        if line:
            return line
    lost = engine.lost_peer(error)
    if lost is None:
        return None
    return (
        f"{lost or 'another ' + engine.peer} stopped answering ({type(error).__name__}); "
        f"{backup_position(backup_dir)} in {backup_dir}: start all {engine.peers} again "
        "with the same command to resume"
    )


def backup_position(backup_dir):
    """'the last backup is at step S (epoch E, batch B)', or that none was made."""
    from tf_lars.training import checkpoints

    saved = checkpoints.read_backup(backup_dir)
    if not (saved and "step" in saved):
        return "no backup was made yet"
    batch = f", batch {saved['batch']}" if saved.get("batch") else ""
    return f"the last backup is at step {saved['step']} (epoch {saved['epoch'] + 1}{batch})"


def _write_failure(error, backup_dir):
    """A failed backup's own line; a full disk or quota anywhere else, named."""
    if not isinstance(error, OSError):  # backups.BackupError says it all
        return str(error)
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return (
        f"could not write {error.filename or 'a file of the run'} ({error.strerror}); "
        f"{backup_position(backup_dir)} in {backup_dir}: free space, then run the same "
        "command to resume"
    )
