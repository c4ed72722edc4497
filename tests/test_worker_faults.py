"""Two worker processes on 127.0.0.1: a worker killed, a worker preempted."""

import json
import signal

import helpers
import keras
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("MultiWorkerMirroredStrategy needs TensorFlow", allow_module_level=True)

from test_training import TINY, epochs_logged, finish, kill_the_second, wait_for_step, weights_of  # noqa: E402
from test_training import start_workers as two_workers  # noqa: E402

# 20 steps an epoch, 3 epochs; a backup every 2 steps shows where the run is.
ARGS = [
    *TINY,
    "--train_examples=320",
    "--epochs=3",
    "--eval_every_epochs=0",
    "--backup_every_steps=2",
    "--strategy=multi_worker_mirrored",
]


def start_workers(tmp_path, args=ARGS):
    return two_workers(args, tmp_path / "run", tmp_path)


@pytest.mark.heavy
def test_a_killed_worker_ends_its_peer_within_seconds_with_one_line(tmp_path):
    workers = start_workers(tmp_path)
    err, seconds = kill_the_second(tmp_path / "run", workers)
    assert workers[0].returncode == 1
    assert err.strip().splitlines()[-1] == helpers.lost_peer_line(
        tmp_path / "run", "worker 1 stopped answering (UnavailableError)", "workers"
    ), err[-3000:]
    assert "Traceback" not in err
    assert seconds < 60, seconds  # measured: about 7 s on 2 cores


@pytest.mark.heavy
def test_sigterm_on_one_worker_stops_both_at_one_step_and_both_resume_there(tmp_path):
    workers = start_workers(tmp_path)
    try:
        wait_for_step(tmp_path / "run", workers, 4)
        workers[1].send_signal(signal.SIGTERM)  # the other worker is told nothing
        outputs = finish(workers)
    finally:
        for w in workers:
            w.kill()
    assert [w.returncode for w in workers] == [75, 75], [e[-2000:] for _, e in outputs]
    steps = {out.strip().splitlines()[-1].split("at step ")[1].split(";")[0] for out, _ in outputs}
    saved = helpers.backup_metadata(tmp_path / "run")
    assert steps == {str(saved["step"])}  # one step for both: the chief's backup
    assert 0 < saved["batch"] < 20  # inside the first epoch
    resumed = finish(start_workers(tmp_path))
    assert [w for w in resumed if "Traceback" in w[1]] == []
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 * 20 and summary["resumed_from_epoch"] == 0
    assert epochs_logged(tmp_path / "run") == [0, 1, 2]  # one row an epoch
    # Both workers hold the same trained weights at the end (BatchNorm's
    # moving statistics are each worker's own).
    for a, b in zip(
        weights_of(tmp_path / "run" / "model.keras", trainable_only=True),
        weights_of(tmp_path / "scratch1" / "model.keras", trainable_only=True),
    ):
        assert (a == b).all()


@pytest.mark.heavy
def test_a_frozen_worker_ends_its_peer_within_the_heartbeat_timeout(tmp_path):
    workers = start_workers(tmp_path)
    err, seconds = kill_the_second(tmp_path / "run", workers, sig=signal.SIGSTOP)
    assert workers[0].returncode == 1, err[-3000:]
    assert err.strip().splitlines()[-1] == helpers.lost_peer_line(
        tmp_path / "run", "worker 1 stopped answering (UnavailableError)", "workers"
    ), err[-3000:]
    assert "Traceback" not in err
    print(f"the other ended {seconds:.1f} s after the freeze")
    # TensorFlow's coordination service: 10 s without heartbeats (measured: 7.5 s).
    assert seconds < 40, seconds
