"""A run folder that survives: versioned backups, the run's lock, whole
checkpoints, heartbeats between JAX processes (unit level; the trainer's
own runs are in test_run_folder_trainer.py)."""

import errno
import json
import os
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest

from tf_lars.training import backups, checkpoints
from tf_lars.training import lock as run_lock
from tf_lars.training.engines.heartbeat import Heartbeat


def small_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), batch_size=4, verbose=0)  # momentum built
    return model


def backed_up(folder, steps, keep=2):
    """A model backed up at each of `steps`; the weights it had at each."""
    model = small_model()
    backup = checkpoints.BackupAndRestore(str(folder), steps_per_epoch=100, keep=keep)
    backup.set_model(model)
    weights = {}
    for step in steps:
        model.optimizer.iterations.assign(step)
        model.layers[0].kernel.assign(np.full((3, 2), float(step)))
        backup.save(0, step)
        weights[step] = [np.array(w) for w in model.get_weights()]
    return backup, weights


def restored(folder):
    """A fresh model restored from `folder`, as a restarted run would: its
    weights and step."""
    backups.forget()
    model = small_model()
    backup = checkpoints.BackupAndRestore(str(folder), steps_per_epoch=100)
    backup.set_model(model)
    backup.on_train_begin()
    return model.get_weights(), model.optimizer.iterations.numpy()


def version(folder, step):
    return folder / f"step-{step:010d}"


def test_each_backup_is_a_new_version_and_the_last_two_are_kept(tmp_path):
    _, weights = backed_up(tmp_path, [3, 5, 8, 13])
    assert sorted(os.listdir(tmp_path)) == ["step-0000000008", "step-0000000013"]
    assert checkpoints.read_backup(str(tmp_path)) == {"epoch": 0, "batch": 13, "step": 13}
    got, step = restored(tmp_path)
    assert step == 13
    for a, b in zip(got, weights[13]):
        np.testing.assert_array_equal(a, b)  # weights and momentum


def _half_the_weights(folder):
    path = folder / backups.WEIGHTS
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _one_byte_changed(folder):
    path = folder / backups.WEIGHTS
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


CUTS = {
    "half the weights": (_half_the_weights, "bytes and not the"),
    "metadata without weights": (lambda f: (f / backups.WEIGHTS).unlink(), "is missing"),
    "weights without metadata": (
        lambda f: (f / backups.METADATA).unlink(),
        "its write was cut short",
    ),
    "metadata cut": (lambda f: (f / backups.METADATA).write_text('{"epoch": 0, "ba'), "read"),
    "a byte changed": (_one_byte_changed, "does not match the SHA-256"),
}


@pytest.mark.parametrize("cut", sorted(CUTS))
def test_a_damaged_newest_version_is_named_and_the_one_before_resumed(tmp_path, cut, caplog):
    _, weights = backed_up(tmp_path, [4, 6])
    damage, said = CUTS[cut]
    damage(version(tmp_path, 6))
    with caplog.at_level("WARNING"):
        got, step = restored(tmp_path)
    assert step == 4
    for a, b in zip(got, weights[4]):
        np.testing.assert_array_equal(a, b)
    (warning,) = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert warning.startswith(f"backup {version(tmp_path, 6)} is damaged (")
    assert said in warning and warning.endswith("resuming from the one before it")


def test_the_next_backup_replaces_the_damaged_version(tmp_path):
    backup, _ = backed_up(tmp_path, [4, 6])
    _half_the_weights(version(tmp_path, 6))
    backup.model.optimizer.iterations.assign(5)
    backup.save(0, 5)
    assert sorted(os.listdir(tmp_path)) == ["step-0000000004", "step-0000000005"]


def test_a_failed_write_keeps_the_previous_backup_and_says_so_in_one_line(tmp_path):
    backup, weights = backed_up(tmp_path, [4])
    model = backup.model

    def full_disk(path, overwrite=True):
        with open(path, "wb") as f:
            f.write(b"\x89HDF\r\n" + b"\0" * 100)  # a start of a weights file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    model.save_weights = full_disk
    model.optimizer.iterations.assign(6)
    with pytest.raises(backups.BackupError) as failed:
        backup.save(0, 6)
    assert str(failed.value) == (
        f"could not write a backup in {tmp_path} (No space left on device); the last "
        "backup (step 4) is intact: free space or fix the folder, then run the same "
        "command to resume"
    )
    assert os.listdir(tmp_path) == ["step-0000000004"]  # the cut version is gone
    got, step = restored(tmp_path)
    assert step == 4 and all((a == b).all() for a, b in zip(got, weights[4]))


def test_a_backup_of_the_layout_before_versions_resumes_and_goes_once_replaced(tmp_path):
    model = small_model()
    model.layers[0].kernel.assign(np.full((3, 2), 7.0))
    model.optimizer.iterations.assign(9)
    model.save_weights(str(tmp_path / "latest.weights.h5"))
    (tmp_path / "training_metadata.json").write_text('{"epoch": 1, "batch": 0, "step": 9}')
    got, step = restored(tmp_path)
    assert step == 9 and (got[0] == 7.0).all()
    backup = checkpoints.BackupAndRestore(str(tmp_path), steps_per_epoch=100, keep=2)
    backup.set_model(model)
    for step in (10, 11):
        model.optimizer.iterations.assign(step)
        backup.save(1, step)
        assert ("latest.weights.h5" in os.listdir(tmp_path)) == (step == 10)
    assert sorted(os.listdir(tmp_path)) == ["step-0000000010", "step-0000000011"]


def test_a_checkpoint_whose_save_fails_leaves_the_previous_one_whole(tmp_path):
    model = small_model()
    save = checkpoints.SaveModel(str(tmp_path / "checkpoint.keras"))
    save.set_model(model)
    save.on_epoch_end(0)
    before = (tmp_path / "checkpoint.keras").read_bytes()

    def cut_save(path, overwrite=True):
        with open(path, "wb") as f:
            f.write(before[: len(before) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    model.save = cut_save
    with pytest.raises(OSError):
        save.on_epoch_end(1)
    assert (tmp_path / "checkpoint.keras").read_bytes() == before
    keras.models.load_model(tmp_path / "checkpoint.keras")


# The run folder's lock.


def test_a_second_lock_on_a_folder_is_refused_naming_the_holder(tmp_path):
    first = run_lock.RunLock(str(tmp_path))
    first.acquire()
    with pytest.raises(ValueError) as refused:
        run_lock.RunLock(str(tmp_path)).acquire()
    holder = json.loads((tmp_path / "run.lock").read_text())
    assert str(refused.value) == (
        f"--model_dir {tmp_path} is in use by another trainer (process {os.getpid()} on "
        f"{holder['host']}, started {holder['since']}; lock {tmp_path / 'run.lock'}): "
        "wait for it to end or give another --model_dir"
    )
    first.release()
    assert not (tmp_path / "run.lock").exists()
    with run_lock.RunLock(str(tmp_path)):  # free again
        assert (tmp_path / "run.lock").exists()
    assert not (tmp_path / "run.lock").exists()


def write_lock(folder, **holder):
    me = run_lock.Holder.me()
    (folder / "run.lock").write_text(json.dumps(dict(vars(me), **holder)))


def ended_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize(
    "holder",
    [
        pytest.param(lambda: {"pid": ended_pid()}, id="process gone"),
        pytest.param(lambda: {"started": "1"}, id="pid taken by another process"),
        pytest.param(lambda: None, id="cut lock file"),
    ],
)
def test_a_lock_whose_holder_is_gone_is_taken_over_with_a_warning(tmp_path, holder, caplog):
    given = holder()
    if given is None:
        (tmp_path / "run.lock").write_text('{"host": "')
    else:
        write_lock(tmp_path, **given)
    with caplog.at_level("WARNING"):
        taken = run_lock.RunLock(str(tmp_path))
        taken.acquire()
    assert json.loads((tmp_path / "run.lock").read_text())["token"] == taken.me.token
    (line,) = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
    assert line.startswith(f"taking over the lock {tmp_path / 'run.lock'}: ")


def test_a_lock_of_another_host_needs_force_unlock(tmp_path, caplog):
    write_lock(tmp_path, host="elsewhere-7", since="2026-01-02 03:04:05")
    with pytest.raises(ValueError) as refused:
        run_lock.RunLock(str(tmp_path)).acquire()
    assert str(refused.value).endswith(
        f"(process {os.getpid()} on elsewhere-7, started 2026-01-02 03:04:05; lock "
        f"{tmp_path / 'run.lock'}): if that trainer has ended (its host cannot be asked "
        "from here), start again with --force_unlock; else give another --model_dir"
    )
    with caplog.at_level("WARNING"):
        run_lock.RunLock(str(tmp_path), force=True).acquire()
    assert "--force_unlock (it was held by process" in caplog.text


def test_of_two_trainers_taking_a_lock_at_once_one_wins(tmp_path):
    won = []

    def take():
        try:
            run_lock.RunLock(str(tmp_path)).acquire()
            won.append(1)
        except ValueError:
            pass

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert won == [1]


# Heartbeats between JAX processes (a key-value store like jax.distributed's).


class Store:
    """`jax.distributed`'s client's key-value calls, in memory; `hang` makes
    every call wait forever (a frozen coordinator)."""

    def __init__(self):
        self.values, self.hang = {}, threading.Event()

    def _wait(self):
        while self.hang.is_set():
            time.sleep(0.05)

    def key_value_set(self, key, value, allow_overwrite=False):
        self._wait()
        self.values[key] = value

    def key_value_dir_get(self, prefix):
        self._wait()
        return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


def watch(store, process_id, lost):
    return Heartbeat(
        store,
        process_id,
        2,
        lambda who, s: lost.append((who, s, time.monotonic())),
        timeout=1.0,
        interval=0.05,
    ).start()


def test_a_frozen_peer_is_named_within_the_timeout():
    store, lost = Store(), []
    mine, peer = watch(store, 0, lost), watch(store, 1, [])
    time.sleep(1.5)
    assert lost == []  # both beat
    peer.stopped.set()  # frozen: it beats no more (and says nothing)
    frozen = time.monotonic()
    time.sleep(2.0)
    assert [(who, s) for who, s, _ in lost] == [("process 1", 1.0)]
    assert 1.0 - 0.1 < lost[0][2] - frozen < 1.0 + 0.5  # the timeout, a beat or two more
    mine.stop()


def test_a_peer_that_ended_normally_is_not_reported():
    store, lost = Store(), []
    mine, peer = watch(store, 0, lost), watch(store, 1, [])
    time.sleep(0.3)
    peer.stop()
    time.sleep(2.0)
    assert lost == []
    mine.stop()


def test_a_frozen_coordinator_is_named_though_the_store_hangs():
    store, lost = Store(), []
    watch(store, 0, [])
    mine = watch(store, 1, lost)
    time.sleep(0.3)
    store.hang.set()  # every call now waits
    time.sleep(2.0)
    assert [who for who, _, _ in lost] == ["process 0 (the coordinator)"]
    mine.stopped.set()
    store.hang.clear()
