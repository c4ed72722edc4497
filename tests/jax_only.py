"""The environment without TensorFlow: .venv-jax (tools/setup_jax_only.sh),
tf_lars installed there with its `jax` and `study` extras only."""

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, ".venv-jax", "bin")


def command(name="python"):
    """The path of `name` (python, tf-lars-train) in .venv-jax, checked to
    have no TensorFlow."""
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        pytest.fail(f".venv-jax has no {name}: run bash tools/setup_jax_only.sh", pytrace=False)
    probe = subprocess.run(
        [os.path.join(BIN, "python"), "-c", "import tensorflow"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode != 0, (
        ".venv-jax has TensorFlow: delete it and run bash tools/setup_jax_only.sh again"
    )
    assert "No module named 'tensorflow'" in probe.stderr, probe.stderr[-1000:]
    return path
