"""The tf.data service on 127.0.0.1: a dispatcher and worker processes
started by tools/data_service.py, the trainer reading through them."""

import collections
import json
import os
import signal
import subprocess
import sys
import time

import helpers
import keras
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("the tf.data service needs TensorFlow", allow_module_level=True)

import tensorflow as tf  # noqa: E402
from test_data import write_shards  # noqa: E402
from test_training import free_port, wait_for_step  # noqa: E402

from tf_lars.data import pipeline, service  # noqa: E402

TOOL = os.path.join(helpers.ROOT, "tools", "data_service.py")


def start(*args):
    return subprocess.Popen(
        [sys.executable, TOOL, *args],
        env=helpers.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def cluster():
    """A dispatcher and two workers on 127.0.0.1: (address, the workers)."""
    port = free_port()
    dispatcher = start("dispatcher", f"--port={port}")
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:  # (the workers check that it answers)
        try:
            service.check_answers(address, timeout=1)
            break
        except ValueError:
            assert time.time() < deadline and dispatcher.poll() is None, dispatcher.stderr.read()
            time.sleep(0.2)
    workers = [start("worker", f"--dispatcher={address}", "--host=127.0.0.1") for _ in range(2)]
    yield address, workers
    for p in [dispatcher, *workers]:
        p.kill()
        p.wait()


def test_two_consumers_of_one_job_read_every_record_once(cluster, tmp_path):
    address, _ = cluster
    # 4 shards of 25 records labelled with their own ids, 1..100.
    write_shards(tmp_path, shards=4, per_shard=25, label_of=lambda s, k: 25 * s + k + 1)
    spec = pipeline.InputSpec(
        str(tmp_path), "train", training=True, image_size=32, num_classes=101, repeat=False
    )
    consumers = [
        service.distribute(pipeline.make_dataset(spec, 4), address, "one-epoch") for _ in range(2)
    ]
    seen, batches = collections.Counter(), [0, 0]
    iterators = {i: iter(ds) for i, ds in enumerate(consumers)}
    while iterators:  # the consumers take turns, as training steps would
        for i in list(iterators):
            try:
                _, labels = next(iterators[i])
            except StopIteration:
                del iterators[i]
                continue
            seen.update(labels.numpy().tolist())
            batches[i] += 1
    assert min(batches) > 0, batches  # both consumers shared the job
    # One pass over the shards in all: every id once (stored 1..100, read 0..99).
    assert seen == collections.Counter(range(100)), seen


def test_a_service_address_that_does_not_answer_ends_with_one_line(tmp_path):
    write_shards(tmp_path / "shards", shards=2, per_shard=8)
    write_shards(tmp_path / "shards", "validation", shards=1, per_shard=8)
    port = free_port()  # nothing listens there
    started = time.time()
    result = helpers.run_trainer(*SHARDS(tmp_path), f"--data_service=127.0.0.1:{port}")
    seconds = time.time() - started
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"tf-lars-train: error: --data_service=127.0.0.1:{port} does not answer "
        "(Connection refused, after 10 s at most): start its dispatcher (python "
        "tools/data_service.py dispatcher) or fix the address"
    )
    assert seconds < 60, seconds  # starting TensorFlow, mostly


def SHARDS(tmp_path, epochs=1):  # noqa: N802
    return [
        "--data_format=imagenet",
        f"--data_dir={tmp_path / 'shards'}",
        "--model=resnet8",
        "--image_size=32",
        "--num_classes=10",
        "--preset=legacy",
        "--batch_size=8",
        "--train_examples=64",
        "--eval_examples=8",
        f"--epochs={epochs}",
        "--warmup_epochs=1",
        "--learning_rate=0.1",
        "--verbose=0",
        f"--model_dir={tmp_path / 'run'}",
    ]


def stalled_step(run, seconds=8, timeout=120):
    """The backup's step once it stood still for `seconds`."""
    deadline, last, since = time.time() + timeout, None, time.time()
    while time.time() < deadline:
        step = (helpers.backup_metadata(run) or {}).get("step")
        if step != last:
            last, since = step, time.time()
        elif time.time() - since > seconds:
            return step
        time.sleep(0.2)
    raise AssertionError(f"the run never stalled (step {last})")


@pytest.mark.heavy
def test_the_trainer_reads_only_through_the_service_and_outlives_its_workers(cluster, tmp_path):
    address, workers = cluster
    write_shards(tmp_path / "shards", shards=8, per_shard=8, label_of=lambda s, k: k % 10)
    write_shards(tmp_path / "shards", "validation", shards=1, per_shard=8)
    args = [*SHARDS(tmp_path, epochs=6), "--backup_every_steps=1", f"--data_service={address}"]
    run = tmp_path / "run"
    trainer = helpers.start_trainer(*args)
    try:
        wait_for_step(run, [trainer], 6)
        workers[1].send_signal(signal.SIGKILL)  # the other worker feeds on
        wait_for_step(run, [trainer], 14)
        workers[0].send_signal(signal.SIGKILL)  # no worker: training waits
        stalled = stalled_step(run)
        assert trainer.poll() is None and stalled < 6 * 8
        workers.append(start("worker", f"--dispatcher={address}", "--host=127.0.0.1"))
        out, err = trainer.communicate(timeout=300)  # a new worker: it goes on
    finally:
        trainer.kill()
    assert trainer.returncode == 0, err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 * 8
    assert tf.io.gfile.exists(str(run / "model.keras"))


@pytest.mark.parametrize(
    "flag, message",
    [
        (
            "--deterministic",
            "--deterministic with --data_service: the service's workers race for "
            "shards, so the order cannot repeat; drop one of them",
        ),
        (
            "--strict_data",
            "--strict_data with --data_service: records are checked in the service's "
            "workers; it would not stop here; drop one of them",
        ),
    ],
)
def test_what_the_service_cannot_do_is_refused_in_one_line(tmp_path, flag, message):
    result = helpers.run_trainer(*SHARDS(tmp_path), "--seed=1", flag, "--data_service=x:1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"tf-lars-train: error: {message}"


@pytest.mark.heavy
def test_two_multi_worker_trainers_consume_one_job(cluster, tmp_path):
    from test_training import finish, start_workers

    address, _ = cluster
    write_shards(tmp_path / "shards", shards=8, per_shard=8, label_of=lambda s, k: k % 10)
    write_shards(tmp_path / "shards", "validation", shards=2, per_shard=8)
    args = [
        *SHARDS(tmp_path, epochs=2)[:-1],  # (start_workers gives the folders)
        "--strategy=multi_worker_mirrored",
        "--batch_size=16",
        f"--data_service={address}",
    ]
    outputs = finish(start_workers(args, tmp_path / "run", tmp_path))
    assert all("Traceback" not in err for _, err in outputs), outputs[0][1][-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 * 4  # 64 images an epoch at batch 16


@pytest.mark.heavy
def test_two_jax_processes_consume_one_job(cluster, tmp_path):
    pytest.importorskip("jax")
    from test_jax_engine import start_processes
    from test_training import finish

    address, _ = cluster
    write_shards(tmp_path / "shards", shards=8, per_shard=8, label_of=lambda s, k: k % 10)
    write_shards(tmp_path / "shards", "validation", shards=2, per_shard=8)
    args = [*SHARDS(tmp_path, epochs=2)[:-1], "--batch_size=16", f"--data_service={address}"]
    outputs = finish(start_processes(args, tmp_path / "run", tmp_path))
    assert all("Traceback" not in err for _, err in outputs), outputs[0][1][-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 * 4
