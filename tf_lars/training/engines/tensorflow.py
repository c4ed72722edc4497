"""The TensorFlow engine: a `tf.distribute` strategy from a name, who the
chief is, and what a multi-worker run needs (Keras's MultiWorkerMirrored
fix, the coordination service that carries the stop after a SIGTERM)."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Optional

import tensorflow as tf

from tf_lars.training import faults
from tf_lars.training.config import TrainConfig
from tf_lars.training.engines.base import Engine

# The names live with the flags, which must not need TensorFlow.
from tf_lars.training.flags import COLLECTIVES
from tf_lars.training.flags import STRATEGIES as NAMES


def make_deterministic() -> None:
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


def split_cpu(devices: int) -> None:
    """Splits the CPU into `devices` logical devices (before any op runs)."""
    if devices > 1:
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration()] * devices,
        )


def _cluster_tasks() -> int:
    spec = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return sum(len(v) for k, v in spec.items() if k in ("chief", "worker"))


def _tpu(tpu: Optional[str]) -> Any:
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.NotFoundError) as e:
        raise ValueError(
            f"--strategy=tpu: no TPU at --tpu={tpu!r} ({str(e).splitlines()[0]}); "
            "pass the TPU's name or address, or 'local' on a TPU VM"
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def make(name: str, tpu: Optional[str] = None, collective: str = "auto") -> Any:
    """The strategy `name` (see NAMES); `auto` picks what the machine has."""
    if name not in NAMES:
        raise ValueError(f"--strategy: unknown strategy {name!r}; use one of {NAMES}")
    if collective not in COLLECTIVES:
        raise ValueError(
            f"--collective_communication: unknown {collective!r}; use one of {tuple(COLLECTIVES)}"
        )
    if name == "auto" and (tpu or _cluster_tasks() > 1):
        name = "tpu" if tpu else "multi_worker_mirrored"
    # These two must come before anything that starts TensorFlow's runtime
    # (listing devices does): collectives are configured at start-up.
    if name == "tpu":
        return _tpu(tpu)
    if name == "multi_worker_mirrored":
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=getattr(
                tf.distribute.experimental.CommunicationImplementation, collective.upper()
            )
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 or len(cpus) > 1 else "one_device"
    if name == "mirrored":
        # All local GPUs; without GPUs, the logical CPU devices (--cpu_devices).
        return tf.distribute.MirroredStrategy(None if gpus else [d.name for d in cpus])
    if not gpus:
        # The default strategy runs on the CPU without OneDeviceStrategy's
        # per-device copy of the input pipeline, whose iterators autotune
        # whatever their dataset's options say (see inputs.dataset_fn).
        return tf.distribute.get_strategy()
    return tf.distribute.OneDeviceStrategy(gpus[0].name)


def is_chief(strategy: Any) -> bool:
    """True on the one worker that may write to the model directory."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or isinstance(resolver, tf.distribute.cluster_resolver.TPUClusterResolver):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def is_multi_worker(strategy: Any) -> bool:
    """True for a strategy that spans several worker processes."""
    extended = getattr(strategy, "extended", None)
    return bool(getattr(extended, "_in_multi_worker_mode", lambda: False)())


def task_name(strategy: Any) -> str:
    """'worker 0', 'chief 0', ...: this process's task ('' outside a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return ""
    return f"{resolver.task_type} {resolver.task_id}"


def coordination(strategy: Any) -> Any:
    """TensorFlow's eager context, whose coordination service the workers of
    a multi-worker run share (a key-value store); None for one process."""
    if not is_multi_worker(strategy):
        return None
    from tensorflow.python.eager import context

    return context.context()


def accelerators() -> list[str]:
    """The device kinds of this host's GPUs and TPUs."""
    kinds = []
    for device in tf.config.list_physical_devices():
        if device.device_type in ("GPU", "TPU"):
            details = tf.config.experimental.get_device_details(device)
            kinds.append(details.get("device_name", device.device_type))
    return kinds


class TensorFlowEngine(Engine):
    """A `tf.distribute` strategy: one device, the local GPUs (or logical CPU
    devices), several workers (TF_CONFIG) or a TPU.

    Build it before any TensorFlow op runs: it configures the CPU's logical
    devices, determinism and the collectives.
    """

    def __init__(self, strategy: Any) -> None:
        self.strategy = strategy
        self.num_replicas_in_sync = strategy.num_replicas_in_sync
        self.chief = is_chief(strategy)
        self.multi_worker = is_multi_worker(strategy)

    @staticmethod
    def from_config(cfg: TrainConfig) -> TensorFlowEngine:
        from tf_lars.training.engines import keras_mwms

        if cfg.strategy == "multi_worker_mirrored" or os.environ.get("TF_CONFIG"):
            keras_mwms.apply()
        if cfg.deterministic:
            make_deterministic()
        split_cpu(cfg.cpu_devices)
        return TensorFlowEngine(make(cfg.strategy, cfg.tpu, cfg.collective_communication))

    def describe(self) -> str:
        where = f", this is {task_name(self.strategy)}" if self.multi_worker else ""
        return (
            f"TensorFlow: {type(self.strategy).__name__} with "
            f"{self.num_replicas_in_sync} replicas{where}"
        )

    def scope(self) -> Any:
        return self.strategy.scope()

    def distribute(self, dataset_fn: Callable[[Any], Any]) -> Any:
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def preemption_channel(self) -> dict[str, Any]:
        return {"coordination": coordination(self.strategy)}

    def lost_peer(self, error: BaseException) -> Optional[str]:
        if not self.multi_worker:
            return None
        return faults.worker_failure(error, task_name(self.strategy))


ENGINE = TensorFlowEngine
