"""The optimizer, schedule, in-memory data and benchmark suites again, under JAX.

Keras fixes its backend at import, so the suites run in a subprocess with
KERAS_BACKEND=jax. Skips when JAX is not installed (pip install "jax[cpu]").
"""

import importlib.util
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                    reason='JAX is not installed: pip install "jax[cpu]"')
def test_optimizer_and_schedules_under_jax():
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    suites = [os.path.join(HERE, f) for f in ("test_optimizer.py", "test_schedules.py",
                                                       "test_arrays.py", "test_precise_bn.py",
                                                       "test_benchmarks.py")]
    result = subprocess.run(
        # Tests named *tf_distribute* or *input_benchmark* need TensorFlow:
        # left out here, not skipped.
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-k", "not tf_distribute and not input_benchmark", *suites],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout
