"""The benchmarks, run end to end as the command-line tools they are.

Their timings are not checked (speed is never a test's business here); what is
checked is that they run, that bad input fails with one line, and that the
figures the optimizer benchmark derives (parameter counts, the update's byte
floor) agree with a count made here.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import tf_lars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_optimizer_benchmark_runs_and_counts_the_bytes(tmp_path):
    out = tmp_path / "result.json"
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "benchmark_optimizer.py"),
            "--model=resnet8",
            "--image_size=28",
            "--batch_size=8",
            "--steps=2",
            "--repeats=1",
            "--update_repeats=2",
            f"--out={out}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| training step via fit (ms) |" in result.stdout
    r = json.loads(out.read_text())

    model = tf_lars.models.build("resnet8", num_classes=10, image_size=28, channels=1)
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    params = sum(int(np.prod(s)) for s in shapes)
    adapted = [s for s in shapes if len(s) > 1]  # kernels: LARS adapts them
    assert r["params"] == params
    assert r["adapted_tensors"] == len(adapted)
    assert r["backend"] == keras.backend.backend()

    bandwidth = r["stream_bandwidth_GBps"] * 1e9
    # A memory stream on any machine this runs on: 100 MB/s to 2 TB/s.
    assert 1e8 < bandwidth < 2e12, bandwidth
    # SGD with momentum reads w, g, v and writes w, v (4 bytes each); LARS
    # reads every adapted w and g once more for the norms.
    sgd_ms = 20 * params / bandwidth * 1e3
    extra_ms = 8 * sum(int(np.prod(s)) for s in adapted) / bandwidth * 1e3
    assert np.isclose(r["update_floor_ms"]["sgd"], sgd_ms, rtol=1e-9)
    assert np.isclose(r["update_floor_ms"]["lars"], sgd_ms + extra_ms, rtol=1e-9)
    for name in ("sgd", "lars"):
        # The fastest step is no slower than the median one, and the update
        # alone, a part of every step, no slower than the fastest step; all
        # above the memory floor of the update and below a minute.
        assert r["update_floor_ms"][name] <= r["update_ms"][name]
        assert r["update_ms"][name] <= r["fit_step_min_ms"][name] <= r["fit_step_ms"][name]
        assert r["fit_step_ms"][name] < 60_000


def run_tool(name, *args):
    """`tools/<name>` with `args`, run to its end: the completed process."""
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_input_benchmark(*args):
    return run_tool("benchmark_input.py", *args)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="the input pipeline is TensorFlow's"
)
def test_input_benchmark_runs_on_synthetic_photos_and_names_bad_input(tmp_path):
    result = run_input_benchmark(
        f"--synthetic_dir={tmp_path / 'photos'}",
        "--synthetic_images=48",
        "--max_images=48",
        "--image_size=64",
        "--batch_size=8",
        "--seconds=0.3",
        "--repeats=1",
        "--data_service",
        "--previous=HEAD",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ratios = {
        line.split(":")[0]: float(line.split(":")[1])
        for line in result.stdout.splitlines()
        if line.startswith("ratio ")
    }
    assert set(ratios) == {
        "ratio pipeline (float32) / bare decode",
        "ratio pipeline (uint8) / bare decode",
        "ratio per-image work alone / bare decode",
        "ratio service / in-process pipeline (uint8)",
        "ratio pipeline (uint8) / per-image work alone",
        "ratio pipeline at HEAD (uint8) / per-image work alone",
    }
    # Where the time goes: the CPU time of each reading stage, then the work's.
    stages = result.stdout.split("Where the time goes")[1].splitlines()
    cpu = [
        float(line.split("|")[2])
        for line in stages
        if line.startswith("| ") and "us |" not in line
    ]
    assert len(cpu) == 5 and all(c > 0 for c in cpu)
    assert 0.01 < ratios["ratio service / in-process pipeline (uint8)"] < 100
    # 64 x 64 x 3 uint8 pixels and an int32 label an image.
    assert "bytes per image through the service: 12,292 (before compression)" in result.stdout
    # Rates over the bare decode's: the training pipeline does the per-image
    # work and more (reading, parsing), so it is not faster than that work
    # alone (twice allowed for 0.3 s windows on a busy machine).
    work = ratios["ratio per-image work alone / bare decode"]
    assert 0.01 < work < 100
    for dtype in ("float32", "uint8"):
        assert 0.01 < ratios[f"ratio pipeline ({dtype}) / bare decode"] < 2 * work

    unknown = run_input_benchmark(f"--data_dir={tmp_path / 'photos'}", "--previous=no-such-rev")
    assert unknown.returncode != 0
    assert (
        unknown.stderr.strip()
        .splitlines()[-1]
        .startswith("benchmark_input: error: --previous=no-such-rev: git archive failed")
    )
    missing = run_input_benchmark(f"--data_dir={tmp_path / 'none'}")
    assert missing.returncode != 0
    assert (
        missing.stderr.strip()
        .splitlines()[-1]
        .startswith(f"benchmark_input: error: data_dir '{tmp_path / 'none'}' is not a folder")
    )
    preset = run_input_benchmark(f"--data_dir={tmp_path / 'photos'}", "--preset=nosuch")
    assert preset.stderr.strip().splitlines()[-1] == (
        "benchmark_input: error: Unknown preprocessing preset 'nosuch': use one of "
        "['legacy', 'small', 'tpu']"
    )


def test_noise_scale_benchmark_runs_and_refuses_a_setting_it_cannot_time(tmp_path):
    out = tmp_path / "noise.json"
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    tool = os.path.join(ROOT, "tools", "benchmark_noise_scale.py")
    small = ["--batch_size=8", "--steps=4", "--every_steps=2", "--repeats=1"]
    result = subprocess.run(
        [sys.executable, tool, *small, f"--out={out}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| with NoiseScale (every 2 steps, 4 parts) |" in result.stdout
    r = json.loads(out.read_text())
    assert r["cost_ratio"] == pytest.approx(r["step_seconds_with_noise_scale"] / r["step_seconds"])
    bad = subprocess.run(
        [sys.executable, tool, *small, "--micro_batches=3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .endswith("--micro_batches=3: give 2 or more dividing --batch_size")
    )


def test_backup_benchmark_writes_versions_and_reports_their_cost(tmp_path):
    out = tmp_path / "backups.json"
    small = ["--model=resnet8", "--image_size=28", "--channels=1", "--num_classes=10"]
    result = run_tool(
        "benchmark_backups.py", *small, "--repeats=3", f"--dir={tmp_path}", f"--out={out}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["ratio"] == pytest.approx(r["versioned_s"] / r["keras_in_place_s"])
    assert r["kept"] == ["step-0000000002", "step-0000000003"]  # the last 2 of 3
    assert r["weights_bytes"] == os.path.getsize(tmp_path / "in_place" / "latest.weights.h5")
    assert "versioned / in place" in result.stdout


def test_trainer_benchmark_times_the_trainer_against_a_bare_fit(tmp_path):
    out = tmp_path / "trainer.json"
    small = ["--batch_size=16", "--steps_per_epoch=3", "--epochs=2", "--repeats=1"]
    result = run_tool("benchmark_trainer.py", *small, f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(r) == {
        "bare",
        "trainer without callbacks",
        "trainer",
        "trainer, --log_trust_ratios",
    }
    for f in r.values():  # one timed epoch: its steps, then its end
        images = 3 * 16
        whole = images / f["rate_inside"] + f["epoch_end_seconds"]
        assert images / f["rate"] == pytest.approx(whole)
        assert f["epoch_end_seconds"] > 0
    # Each of the trainer's callbacks timed, in the order it runs them; the
    # backup is written at the epoch's end, inside the time of that end.
    callbacks = r["trainer"]["callbacks"]
    assert list(callbacks)[:2] == ["Position", "StopOnNaN"] and list(callbacks)[-1] == "Preemption"
    backup = callbacks["BackupAndRestore"]["s_per_epoch_end"]
    assert 0 < backup < r["trainer"]["epoch_end_seconds"]
    assert "callbacks" not in r["bare"]
