"""A `tf.distribute.Strategy` from a name, and who the chief is."""

import json
import os

import tensorflow as tf

# The names live with the flags, which must not need TensorFlow.
from tf_lars.training.flags import COLLECTIVES, STRATEGIES as NAMES


def make_deterministic():
    """Same results from the same seed (before any op runs).

    `enable_op_determinism` covers TensorFlow's GPU kernels and its
    stateful ops, but some of its multi-threaded CPU kernels of the backward
    pass still add partial sums in the order their threads finish (seen in a
    ResNet's gradients at batch 4096). One intra-op thread was not enough
    while the machine was busy: with two inter-op threads, the gradients of
    the same batch still differed between calls in 3 of 4 runs with another
    process loading a core, and in none of 8 with one inter-op thread too
    (XLA's CPU code, `--jit_compile`, was repeatable too).
    """
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def split_cpu(devices):
    """Splits the CPU into `devices` logical devices (before any op runs)."""
    if devices > 1:
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration()] * devices)


def _cluster_tasks():
    spec = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return sum(len(v) for k, v in spec.items() if k in ("chief", "worker"))


def _tpu(tpu):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.NotFoundError) as e:
        raise ValueError(
            f"--strategy=tpu: no TPU at --tpu={tpu!r} ({str(e).splitlines()[0]}); "
            "pass the TPU's name or address, or 'local' on a TPU VM") from None
    return tf.distribute.TPUStrategy(resolver)


def make(name, tpu=None, collective="auto"):
    """The strategy `name` (see NAMES); `auto` picks what the machine has."""
    if name not in NAMES:
        raise ValueError(f"--strategy: unknown strategy {name!r}; use one of {NAMES}")
    if collective not in COLLECTIVES:
        raise ValueError(f"--collective_communication: unknown {collective!r}; "
                         f"use one of {tuple(COLLECTIVES)}")
    if name == "auto" and (tpu or _cluster_tasks() > 1):
        name = "tpu" if tpu else "multi_worker_mirrored"
    # These two must come before anything that starts TensorFlow's runtime
    # (listing devices does): collectives are configured at start-up.
    if name == "tpu":
        return _tpu(tpu)
    if name == "multi_worker_mirrored":
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=getattr(tf.distribute.experimental.CommunicationImplementation,
                                   collective.upper()))
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 or len(cpus) > 1 else "one_device"
    if name == "mirrored":
        # All local GPUs; without GPUs, the logical CPU devices (--cpu_devices).
        return tf.distribute.MirroredStrategy(
            None if gpus else [d.name for d in cpus])
    if not gpus:
        # The default strategy runs on the CPU without OneDeviceStrategy's
        # per-device copy of the input pipeline, whose iterators autotune
        # whatever their dataset's options say (see inputs.dataset_fn).
        return tf.distribute.get_strategy()
    return tf.distribute.OneDeviceStrategy(gpus[0].name)


def is_chief(strategy):
    """True on the one worker that may write to the model directory."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or isinstance(
            resolver, tf.distribute.cluster_resolver.TPUClusterResolver):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def is_multi_worker(strategy):
    """True for a strategy that spans several worker processes."""
    extended = getattr(strategy, "extended", None)
    return bool(getattr(extended, "_in_multi_worker_mode", lambda: False)())


def task_name(strategy):
    """'worker 0', 'chief 0', ...: this process's task ('' outside a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return ""
    return f"{resolver.task_type} {resolver.task_id}"


def coordination(strategy):
    """TensorFlow's eager context, whose coordination service the workers of
    a multi-worker run share (a key-value store); None for one process."""
    if not is_multi_worker(strategy):
        return None
    from tensorflow.python.eager import context

    return context.context()
