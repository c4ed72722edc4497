"""tf-lars-train under KERAS_BACKEND=jax: keras.distribution over two XLA CPU
devices and over two processes (jax.distributed on 127.0.0.1), resume after
SIGTERM and a kill, TensorBoard, and a run on synthetic data where
TensorFlow is not installed (.venv-jax, tools/setup_jax_only.sh).

Each run is a subprocess of the real program with the same flags as the
TensorFlow engine's tests (TINY); weights are compared with the saved models.
"""

import importlib.util
import json
import signal
import subprocess

import helpers
import jax_only
import numpy as np
import pytest
from test_training import (
    TINY,
    env,
    epochs_logged,
    fashion_mnist_shards,
    finish,
    free_port,
    kill_after_backup,
    kill_the_second,
    last_line,
    read_tags,
    stem_statistics,
    train,
    wait_for_step,
    weights_of,
)

if importlib.util.find_spec("jax") is None:
    pytest.fail(
        'JAX is not installed: pip install "jax[cpu]" (or bash tools/setup_env.sh)', pytrace=False
    )

JAX = dict(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")


def jax_train(*args, timeout=400):
    return train(*args, timeout=timeout, **JAX)


def assert_same_weights(a, b, atol=1e-5):
    helpers.assert_weights_close(weights_of(a), weights_of(b), rtol=1e-4, atol=atol)


def test_synthetic_batches_reach_fit_once_each_in_order_and_resume_where_they_stopped():
    # Backend-neutral (numpy and a PyDataset): runs under the suite's backend.
    import keras

    from tf_lars.training import inputs

    data = inputs.spec("synthetic", image_size=4, num_classes=3, seed=5)
    whole = inputs.SyntheticBatches(data, 6, 4)
    halves = [inputs.SyntheticBatches(data, 6, 4, process_id=p, num_processes=2) for p in (0, 1)]
    for k in range(4):  # two processes' rows make up the global batch
        for i in (0, 1):
            np.testing.assert_array_equal(np.concatenate([h[k][i] for h in halves]), whole[k][i])
    np.testing.assert_array_equal(
        inputs.SyntheticBatches(data, 6, 2, skip_steps=2)[0][0], whole[2][0]
    )

    def fresh():
        keras.utils.set_random_seed(1)
        model = keras.Sequential(
            [keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(3)]
        )
        model.compile(keras.optimizers.SGD(0.1), "categorical_crossentropy")
        return model

    # The reference: the four batches in order, once each, from numpy.
    reference = fresh()
    reference.fit(
        np.concatenate([whole[k][0] for k in range(4)]).astype("float32"),
        np.concatenate([whole[k][1] for k in range(4)]),
        batch_size=6,
        shuffle=False,
        verbose=0,
    )
    # Two epochs of two steps (Keras's first read, to build, must not use one
    # up); in the stream's order, as the trainer asks (shuffle=False).
    epochs = fresh()
    epochs.fit(
        inputs.SyntheticBatches(data, 6, 4), epochs=2, steps_per_epoch=2, shuffle=False, verbose=0
    )
    # One step, then a resumed stream for the rest.
    resumed = fresh()
    resumed.fit(
        inputs.SyntheticBatches(data, 6, 4), epochs=1, steps_per_epoch=1, shuffle=False, verbose=0
    )
    resumed.fit(
        inputs.SyntheticBatches(data, 6, 3, skip_steps=1),
        epochs=1,
        steps_per_epoch=3,
        shuffle=False,
        verbose=0,
    )
    for model in (epochs, resumed):
        for a, b in zip(model.get_weights(), reference.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.heavy
def test_two_devices_train_like_one_and_the_chief_logs_what_tensorflow_logs(tmp_path):
    common = [*TINY, "--epochs=2", "--log_trust_ratios", "--precise_bn_images=32"]
    one = jax_train(*common, f"--model_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
    assert "JAX: 1 devices" in one.stderr
    two = jax_train(*common, f"--model_dir={tmp_path / 'two'}", "--cpu_devices=2")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "JAX: 2 devices" in two.stderr and "2 replicas, global batch 16 (8 each)" in two.stderr
    # DataParallel: each device takes half of every global batch, BatchNorm
    # and LARS's norms see the whole of it: the same weights as one device.
    assert_same_weights(tmp_path / "one" / "model.keras", tmp_path / "two" / "model.keras")
    assert np.abs(weights_of(tmp_path / "two" / "model.keras")[0]).max() > 0
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["steps"] == 8
    # PreciseBN: the stem's statistics are those of the stream's first 32
    # images under the final weights (a numpy convolution).
    import keras

    from tf_lars.training import inputs

    data = inputs.spec("synthetic", image_size=16, num_classes=4, seed=3)
    images = np.concatenate([inputs.SyntheticBatches(data, 16, 2)[i][0] for i in range(2)]).astype(
        np.float64
    )
    model = keras.models.load_model(tmp_path / "two" / "model.keras", compile=False)
    mean, var = stem_statistics(model, images)
    bn = model.get_layer("stem_bn")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bn.moving_mean), mean, rtol=1e-3, atol=1e-3
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bn.moving_variance), var, rtol=1e-3, atol=1e-3
    )
    history = (tmp_path / "two" / "history.csv").read_text().splitlines()
    assert len(history) == 3 and "val_accuracy" in history[0]
    tags = read_tags(str(tmp_path / "two"))
    for expected in [
        ("train", "learning_rate"),
        ("train", "images_per_second"),
        ("train", "epoch_images_per_second"),
        ("train", "epoch_loss"),
        ("train", "epoch_accuracy"),
        ("validation", "epoch_accuracy"),
        ("train", "skipped_records/bad_images"),
        ("train", "lars/trust_ratios"),
        ("train", "lars/trust_ratio/stem_conv/kernel"),
    ]:
        assert expected in tags, sorted(tags)


def start_processes(args, model_dir, scratch_root):
    """Two trainer processes joined by jax.distributed on 127.0.0.1."""
    address = f"127.0.0.1:{free_port()}"
    return [
        helpers.start_trainer(
            *args,
            f"--model_dir={model_dir}",
            f"--scratch_dir={scratch_root / f'scratch{i}'}",
            f"--coordinator_address={address}",
            "--num_processes=2",
            f"--process_id={i}",
            **JAX,
        )
        for i in range(2)
    ]


@pytest.mark.heavy
def test_two_processes_stop_together_on_sigterm_and_resume_to_one_process_weights(tmp_path):
    # 20 steps an epoch; a backup every 2 steps shows where the run is.
    common = [
        *TINY,
        "--epochs=2",
        "--train_examples=320",
        "--eval_every_epochs=0",
        "--backup_every_steps=2",
        "--precise_bn_images=32",
    ]
    both = jax_train(*common, f"--model_dir={tmp_path / 'both'}", "--cpu_devices=2")
    assert both.returncode == 0, both.stderr[-3000:]
    run = tmp_path / "hosts"
    processes = start_processes(common, run, tmp_path)
    try:
        wait_for_step(run, processes, step=4)
        processes[1].send_signal(signal.SIGTERM)  # process 0 is told nothing
        outputs = finish(processes)
    finally:
        for p in processes:
            p.kill()
    assert [p.returncode for p in processes] == [75, 75], [e[-3000:] for _, e in outputs]
    assert "2 devices (cpu) in 2 processes, this is process 1" in outputs[1][1]
    # JAX's preemption sync: both back up and stop at one step.
    steps = {out.strip().splitlines()[-1].split("at step ")[1].split(";")[0] for out, _ in outputs}
    saved = helpers.backup_metadata(run)
    assert steps == {str(saved["step"])} and 4 <= saved["step"] < 20, (steps, saved)
    again = start_processes(common, run, tmp_path)
    resumed = finish(again)
    assert [p.returncode for p in again] == [0, 0], [e[-3000:] for _, e in resumed]
    # Process 0 alone writes the run's folder.
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["resumed_from_epoch"] == 0
    assert not (tmp_path / "scratch1" / "summary.json").exists()
    assert epochs_logged(run) == [0, 1]  # the stopped part of epoch 0 not logged twice
    # The same weights as one process with both devices, PreciseBN's
    # statistics (over both processes' images) included.
    assert_same_weights(tmp_path / "both" / "model.keras", run / "model.keras")


@pytest.mark.heavy
def test_the_default_flagfile_on_shards_with_two_processes_each_reading_its_own(tmp_path):
    # 2 training and 2 validation shards: one of each for each process.
    shards = fashion_mnist_shards(tmp_path / "shards", validation_shards=2)
    processes = start_processes(
        [
            "--flagfile=fashion_mnist",
            f"--data_dir={shards}",
            "--batch_size=128",
            "--train_examples=512",
            "--eval_examples=512",
            "--eval_batch_size=256",
            "--epochs=2",
            "--verbose=0",
        ],
        tmp_path / "run",
        tmp_path,
    )
    outputs = finish(processes)
    assert [p.returncode for p in processes] == [0, 0], [e[-3000:] for _, e in outputs]
    # Each process batches 64 of the 128 (the global batch over both).
    assert "2 replicas, global batch 128 (64 each)" in outputs[1][1]
    assert "resnet8 on fashion_mnist: top-1" in outputs[0][0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["skipped_records"]["bad_images"] == 0
    assert np.isfinite(summary["loss"]) and 0 <= summary["top1"] <= 1
    # A process with no shard of its own is refused with one line.
    (shards / "validation-00001-of-00002").unlink()
    (shards / "validation-00000-of-00002").rename(shards / "validation-00000-of-00001")
    refused = finish(
        start_processes(
            ["--flagfile=fashion_mnist", f"--data_dir={shards}", "--epochs=1", "--verbose=0"],
            tmp_path / "two",
            tmp_path,
        )
    )
    line = refused[0][1].strip().splitlines()[-1]
    assert line == (
        f"tf-lars-train: error: 1 validation shards in {shards} for 2 workers: each "
        "worker needs at least one; write more shards (the builders' --num_shards)"
    )


# 20 steps an epoch, a backup every 2: a process is lost inside epoch 1.
LOST_PEER_ARGS = [
    *TINY,
    "--epochs=3",
    "--train_examples=320",
    "--eval_every_epochs=0",
    "--backup_every_steps=2",
]


@pytest.mark.heavy
def test_a_killed_process_ends_the_other_within_seconds_with_one_line(tmp_path):
    run = tmp_path / "run"
    processes = start_processes(
        LOST_PEER_ARGS,
        run,
        tmp_path,
    )
    err, seconds = kill_the_second(run, processes)
    assert processes[0].returncode == 1, err[-3000:]
    assert err.strip().splitlines()[-1] == helpers.lost_peer_line(
        run, "another process stopped answering (JaxRuntimeError)", "processes"
    )
    assert "Traceback" not in err
    # Not jax.distributed's wait for the lost heartbeat (about 100 s) and abort.
    assert seconds < 30, seconds  # measured: under 1 s on 2 cores


@pytest.mark.heavy
def test_a_frozen_process_ends_the_other_within_the_heartbeat_timeout(tmp_path):
    run = tmp_path / "run"
    processes = start_processes(
        LOST_PEER_ARGS,
        run,
        tmp_path,
    )
    err, seconds = kill_the_second(run, processes, sig=signal.SIGSTOP)
    assert processes[0].returncode == 1, err[-3000:]
    assert err.strip().splitlines()[-1] == helpers.lost_peer_line(
        run, "process 1 stopped answering (no heartbeat for 15 s)", "processes"
    )
    assert "Traceback" not in err
    print(f"the other ended {seconds:.1f} s after the freeze")
    # tf_lars's heartbeats: 15 s, checked every second (jax.distributed's own
    # would abort after 100 s with a stack dump).
    assert 14 < seconds < 40, seconds


@pytest.mark.heavy
def test_a_killed_jax_run_resumes_with_the_same_step_count(tmp_path):
    out = tmp_path / "run"
    args = [
        *TINY,
        f"--model_dir={out}",
        "--epochs=6",
        "--train_examples=320",
        "--eval_every_epochs=0",
    ]
    kill_after_backup(args, out, **JAX)
    result = jax_train(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_epoch"] >= 2
    assert summary["steps"] == 6 * 20  # as many steps as an uninterrupted run


def test_nan_loss_stops_under_jax_too(tmp_path):
    result = jax_train(
        *TINY,
        f"--model_dir={tmp_path}",
        "--epochs=2",
        "--learning_rate=1e30",
        "--trust_coefficient=1e10",
    )
    assert result.returncode != 0
    assert "training stopped: the loss became" in last_line(result)


@pytest.mark.heavy
def test_synthetic_runs_where_tensorflow_is_not_installed_and_bad_strategies_are_named(tmp_path):
    # tf-lars-train as installed by pip install "tf_lars[jax]", no TensorFlow.
    result = subprocess.run(
        [
            jax_only.command("tf-lars-train"),
            *TINY,
            "--epochs=1",
            f"--model_dir={tmp_path}",
            "--mixed_precision=mixed_bfloat16",
        ],
        env=env(**JAX),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no TensorBoard logs: they are written with TensorFlow" in result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 4 and np.isfinite(summary["loss"])
    wrong = jax_train(*TINY, "--epochs=1", f"--model_dir={tmp_path / 'x'}", "--strategy=mirrored")
    assert wrong.returncode != 0
    assert last_line(wrong) == (
        "tf-lars-train: error: --strategy=mirrored is for TensorFlow's tf.distribute "
        "(KERAS_BACKEND=tensorflow); under KERAS_BACKEND=jax use --strategy=auto (every "
        "device of every process, keras.distribution.DataParallel) or --strategy=one_device"
    )
