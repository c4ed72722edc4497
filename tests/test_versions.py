"""The oldest versions setup.py admits, tested: the central suites and the
two-worker trainer in .venv-oldest (tools/setup_oldest.sh), so the claim
cannot rot. TF_LARS_SKIP_OLDEST=1 skips them, saying so."""

import os
import re
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PYTHON = os.path.join(ROOT, ".venv-oldest", "bin", "python")
OLDEST = {"python": "3.9", "keras": "3.10.0", "tensorflow": "2.16.2", "jax": "0.4.30"}
SUITES = [
    "test_optimizer.py",
    "test_schedules.py",
    "test_keras_conformance.py",
    "test_optimizer_training.py",
    "test_precise_bn.py",
    "test_models.py",
]
TWO_WORKERS = "test_training.py::test_two_workers_match_one_process_and_only_the_chief_writes"


def oldest_python():
    if os.environ.get("TF_LARS_SKIP_OLDEST") == "1":
        pytest.skip("TF_LARS_SKIP_OLDEST=1: the oldest supported versions are not tested")
    if not os.path.exists(PYTHON):
        pytest.fail(
            ".venv-oldest is missing: run bash tools/setup_oldest.sh "
            "(or set TF_LARS_SKIP_OLDEST=1)"
        )
    return PYTHON


def run(args, **env):
    # JAX 0.4.30's persistent compilation cache (conftest.py turns it on) hands
    # back an executable that computes other numbers on a second run of the
    # same suite (PreciseBN's statistics, a fit's weights; seen with a warm
    # build/jax-cache, never with a cold one): off for the oldest versions.
    return subprocess.run(
        [oldest_python(), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        env=dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false", **env),
    )


def test_setup_py_floors_are_the_tested_versions():
    setup = open(os.path.join(ROOT, "setup.py")).read()
    floors = dict(re.findall(r'"(keras|tensorflow|jax)>=([\d.]+)"', setup))
    assert re.search(r'python_requires=">=([\d.]+)"', setup).group(1) == OLDEST["python"]
    for package in ("keras", "tensorflow", "jax"):
        assert OLDEST[package].startswith(floors[package]), (package, floors[package])


def test_oldest_environment_has_the_oldest_versions():
    result = run(
        [
            "-c",
            "import sys, keras, tensorflow, jax; print(sys.version.split()[0], "
            "keras.__version__, tensorflow.__version__, jax.__version__)",
        ]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    python, keras_version, tf_version, jax_version = result.stdout.split()[-4:]
    assert python.startswith(OLDEST["python"] + ".")
    assert (keras_version, tf_version, jax_version) == (
        OLDEST["keras"],
        OLDEST["tensorflow"],
        OLDEST["jax"],
    )


@pytest.mark.heavy
@pytest.mark.parametrize("part", ["optimizer", "training"])
def test_central_suites_and_two_workers_on_the_oldest_versions(part):
    # Two halves, so that pytest-xdist runs them side by side.
    names = SUITES[:3] if part == "optimizer" else SUITES[3:] + [TWO_WORKERS]
    suites = [os.path.join(HERE, s) for s in names]
    result = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *suites])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout


@pytest.mark.heavy
def test_backend_neutral_suites_under_the_oldest_jax():
    suites = [os.path.join(HERE, s) for s in SUITES if s != "test_optimizer_training.py"]
    result = run(
        [
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "-k",
            "not tf_distribute",
            *suites,
        ],
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout
