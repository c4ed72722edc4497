"""Test set-up: quiet TensorFlow, two logical CPU devices, a JAX compilation
cache shared by the run's processes, shared fixtures."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Many JAX runs of the suite (trainer subprocesses, a run and its resume, a
# study's seeds) compile the same programs: JAX's persistent cache keeps each
# once (keyed by the program, JAX's version and its flags), in build/ (not
# committed), for every process of the run and the runs after it. The
# variables reach every subprocess through the environment.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build", "jax-cache"
    ),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import keras  # noqa: E402
import pytest  # noqa: E402

if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    # Split the CPU in two before any op runs, so MirroredStrategy has two
    # replicas (as Keras's own optimizer_distribute_test does).
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * 2,
    )


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Each test starts from float32, a clean session and fixed seeds."""
    keras.backend.clear_session()
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def fashion_mnist():
    from tf_lars.data import fashion_mnist as fm

    if fm.find_dir() is None:
        pytest.skip(f"Fashion-MNIST is not installed: {fm.HOW_TO_GET}.")
    return fm


def pytest_collection_modifyitems(items):
    """Tests marked `heavy` (minutes each) first, so that under pytest-xdist
    the long ones overlap instead of ending the run one after another."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)
