"""The engine `tf-lars-train` runs on, chosen by KERAS_BACKEND.

* `tensorflow`: a `tf.distribute` strategy (`strategy.make`).
* `jax`: `keras.distribution`, which Keras 3 recommends for several devices
  and hosts: `DataParallel` over every device of every process; processes
  (hosts) join through `keras.distribution.initialize`, i.e.
  `jax.distributed.initialize` (coordinator address, process count and id
  from flags, else Keras's KERAS_DISTRIBUTION_* environment variables).

`JaxEngine` answers what the trainer asks of a strategy (`scope()`,
`num_replicas_in_sync`, `distribute_datasets_from_function`), so the rest
of the trainer is one program for both engines. Each process reads its own
part of the input (its shards, or its rows of a synthetic batch) and feeds
`global batch / processes` examples a step; Keras joins them into the
global batch, split across every device.
"""

import contextlib
import os

import keras

TF_ONLY_STRATEGIES = ("mirrored", "multi_worker_mirrored", "tpu")
JAX_STRATEGIES = ("auto", "one_device")
PROCESS_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                     "KERAS_DISTRIBUTION_PROCESS_ID")


def backend():
    return keras.backend.backend()


def has_tensorflow():
    """Whether TensorFlow can be imported (the JAX engine runs without it)."""
    import importlib.util

    try:
        return importlib.util.find_spec("tensorflow") is not None
    except ImportError:  # (an import hook that refuses it)
        return False


def jax_runtime_error():
    """The exception JAX raises when a computation fails (a collective whose
    peer is gone, among others)."""
    try:
        from jax.errors import JaxRuntimeError
    except ImportError:  # JAX before 0.4.36
        from jaxlib.xla_extension import XlaRuntimeError as JaxRuntimeError
    return JaxRuntimeError


def machine():
    """What this process runs on, for a run's summary: its CPU cores and the
    accelerators this host's backend sees (device kinds, e.g. 'NVIDIA H200')."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    kinds = []
    if backend() == "jax":
        import jax

        kinds = [d.device_kind for d in jax.local_devices() if d.platform != "cpu"]
    elif backend() == "tensorflow":
        import tensorflow as tf

        for device in tf.config.list_physical_devices():
            if device.device_type in ("GPU", "TPU"):
                details = tf.config.experimental.get_device_details(device)
                kinds.append(details.get("device_name", device.device_type))
    elif backend() == "torch":
        import torch

        kinds = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return dict(cpu_cores=cores, accelerators=kinds)


def describe_machine(record):
    """'2 CPU cores' or '16 CPU cores, 1 x NVIDIA H200', from `machine()`'s record."""
    text = f"{record['cpu_cores']} CPU cores"
    for kind in sorted(set(record["accelerators"])):
        text += f", {record['accelerators'].count(kind)} x {kind}"
    return text


def _add_xla_flag(flag):
    flags = os.environ.get("XLA_FLAGS", "").split()
    if flag not in flags:
        os.environ["XLA_FLAGS"] = " ".join(flags + [flag])


class JaxEngine:
    """What the trainer uses of a `tf.distribute` strategy, under JAX.

    Build it before anything asks JAX for its devices: `cpu_devices` > 1
    splits the host platform (XLA's CPU) into that many devices, and
    `deterministic` asks XLA's GPU code for repeatable reductions.
    """

    def __init__(self, name="auto", cpu_devices=1, coordinator_address=None,
                 num_processes=None, process_id=None, deterministic=False, tpu=None):
        if name in TF_ONLY_STRATEGIES or tpu:
            what = f"--strategy={name}" if name in TF_ONLY_STRATEGIES else "--tpu"
            raise ValueError(
                f"{what} is for TensorFlow's tf.distribute (KERAS_BACKEND=tensorflow); under "
                "KERAS_BACKEND=jax use --strategy=auto (every device of every process, "
                "keras.distribution.DataParallel) or --strategy=one_device")
        if name not in JAX_STRATEGIES:
            raise ValueError(f"--strategy: unknown strategy {name!r}; under KERAS_BACKEND=jax "
                             f"use one of {JAX_STRATEGIES}")
        if cpu_devices > 1:
            _add_xla_flag(f"--xla_force_host_platform_device_count={cpu_devices}")
        if deterministic:
            _add_xla_flag("--xla_gpu_deterministic_ops=true")
        self._join(coordinator_address, num_processes, process_id)
        import jax

        self.process_id, self.num_processes = jax.process_index(), jax.process_count()
        devices = keras.distribution.list_devices()
        if name == "one_device":
            if self.num_processes > 1:
                raise ValueError(f"--strategy=one_device with {self.num_processes} processes: "
                                 "use --strategy=auto")
            devices = devices[:1]
        self.devices = devices
        self.num_replicas_in_sync = len(devices)
        self.distribution = None
        if len(devices) > 1:
            # Each process's input is already its own part (see the module's
            # docstring): Keras must not cut a global stream.
            kwargs = {"auto_shard_dataset": False} if self.num_processes > 1 else {}
            self.distribution = keras.distribution.DataParallel(devices=devices, **kwargs)
            keras.distribution.set_distribution(self.distribution)

    @staticmethod
    def _join(coordinator_address, num_processes, process_id):
        given = [v is not None for v in (coordinator_address, num_processes, process_id)]
        from_env = any(os.environ.get(v) for v in PROCESS_VARIABLES)
        if not any(given) and not from_env:
            return
        if any(given) and not all(given):
            raise ValueError("--coordinator_address, --num_processes and --process_id go "
                             "together: give all three (or none, and Keras's "
                             "KERAS_DISTRIBUTION_* environment variables)")
        if num_processes is not None and not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id={process_id} is not in [0, --num_processes="
                             f"{num_processes})")
        keras.distribution.initialize(job_addresses=coordinator_address,
                                      num_processes=num_processes, process_id=process_id)

    def preemption_sync_point(self):
        """With several processes, JAX's agreement on where to stop after a
        SIGTERM reaches any of them (`Preemption`'s `sync_point`); else None."""
        if self.num_processes == 1:
            return None
        from jax.experimental import multihost_utils

        return multihost_utils.reached_preemption_sync_point

    @property
    def chief(self):
        """Process 0 writes the model directory."""
        return self.process_id == 0

    def scope(self):
        # The distribution is set for the whole program.
        return contextlib.nullcontext()

    def input_context(self):
        """This process as a `tf.distribute.InputContext`: one input pipeline
        per process, each batching `global batch / processes` examples."""
        import tensorflow as tf

        return tf.distribute.InputContext(num_input_pipelines=self.num_processes,
                                          input_pipeline_id=self.process_id,
                                          num_replicas_in_sync=self.num_processes)

    def distribute_datasets_from_function(self, dataset_fn):
        return dataset_fn(self.input_context())

    def describe(self):
        return (f"JAX: {self.num_replicas_in_sync} devices ({self.devices[0].split(':')[0]})"
                f" in {self.num_processes} processes, this is process {self.process_id}"
                if self.num_processes > 1 else
                f"JAX: {self.num_replicas_in_sync} devices ({self.devices[0].split(':')[0]})")
