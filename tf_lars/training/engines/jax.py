"""The JAX engine (KERAS_BACKEND=jax): `keras.distribution`, which Keras 3
recommends for several devices and hosts: `DataParallel` over every device
of every process; processes (hosts) join through
`keras.distribution.initialize`, i.e. `jax.distributed.initialize`
(coordinator address, process count and id from flags, else Keras's
KERAS_DISTRIBUTION_* environment variables).

Each process reads its own part of the input (its shards, or its rows of a
synthetic batch) and feeds `global batch / processes` examples a step;
Keras joins them into the global batch, split across every device.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Optional

import keras

from tf_lars.training import faults
from tf_lars.training.config import TrainConfig
from tf_lars.training.engines.base import Engine

TF_ONLY_STRATEGIES = ("mirrored", "multi_worker_mirrored", "tpu")
JAX_STRATEGIES = ("auto", "one_device")
PROCESS_VARIABLES = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
)


def runtime_error() -> type[BaseException]:
    """The exception JAX raises when a computation fails (a collective whose
    peer is gone, among others)."""
    try:
        from jax.errors import JaxRuntimeError

        return JaxRuntimeError
    except ImportError:  # JAX before 0.4.36
        from jaxlib.xla_extension import XlaRuntimeError

        return XlaRuntimeError


def accelerators() -> list[str]:
    """The device kinds of this host's accelerators (e.g. 'NVIDIA H200')."""
    import jax

    return [d.device_kind for d in jax.local_devices() if d.platform != "cpu"]


def _add_xla_flag(flag: str) -> None:
    flags = os.environ.get("XLA_FLAGS", "").split()
    if flag not in flags:
        os.environ["XLA_FLAGS"] = " ".join(flags + [flag])


class JaxEngine(Engine):
    """Every device of every process, as one data-parallel replica set.

    Build it before anything asks JAX for its devices: `cpu_devices` > 1
    splits the host platform (XLA's CPU) into that many devices, and
    `deterministic` asks XLA's GPU code for repeatable reductions.
    """

    peer, peers = "process", "processes"

    def __init__(
        self,
        name: str = "auto",
        cpu_devices: int = 1,
        coordinator_address: Optional[str] = None,
        num_processes: Optional[int] = None,
        process_id: Optional[int] = None,
        deterministic: bool = False,
        tpu: Optional[str] = None,
    ) -> None:
        if name in TF_ONLY_STRATEGIES or tpu:
            what = f"--strategy={name}" if name in TF_ONLY_STRATEGIES else "--tpu"
            raise ValueError(
                f"{what} is for TensorFlow's tf.distribute (KERAS_BACKEND=tensorflow); under "
                "KERAS_BACKEND=jax use --strategy=auto (every device of every process, "
                "keras.distribution.DataParallel) or --strategy=one_device"
            )
        if name not in JAX_STRATEGIES:
            raise ValueError(
                f"--strategy: unknown strategy {name!r}; under KERAS_BACKEND=jax "
                f"use one of {JAX_STRATEGIES}"
            )
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
                raise ValueError(
                    f"--strategy=one_device with {self.num_processes} processes: "
                    "use --strategy=auto"
                )
            devices = devices[:1]
        self.devices = devices
        self.num_replicas_in_sync = len(devices)
        self.distribution = None
        self._heartbeat: Optional[Any] = None
        if len(devices) > 1:
            # Each process's input is already its own part (see the module's
            # docstring): Keras must not cut a global stream.
            kwargs = {"auto_shard_dataset": False} if self.num_processes > 1 else {}
            self.distribution = keras.distribution.DataParallel(devices=devices, **kwargs)
            keras.distribution.set_distribution(self.distribution)

    @staticmethod
    def _join(
        coordinator_address: Optional[str], num_processes: Optional[int], process_id: Optional[int]
    ) -> None:
        given = [v is not None for v in (coordinator_address, num_processes, process_id)]
        from_env = any(os.environ.get(v) for v in PROCESS_VARIABLES)
        if not any(given) and not from_env:
            return
        if any(given) and not all(given):
            raise ValueError(
                "--coordinator_address, --num_processes and --process_id go "
                "together: give all three (or none, and Keras's "
                "KERAS_DISTRIBUTION_* environment variables)"
            )
        if (
            num_processes is not None
            and process_id is not None
            and not (0 <= process_id < num_processes)
        ):
            raise ValueError(
                f"--process_id={process_id} is not in [0, --num_processes={num_processes})"
            )
        keras.distribution.initialize(
            job_addresses=coordinator_address, num_processes=num_processes, process_id=process_id
        )

    @staticmethod
    def from_config(cfg: TrainConfig) -> JaxEngine:
        return JaxEngine(
            cfg.strategy,
            cfg.cpu_devices,
            cfg.coordinator_address,
            cfg.num_processes,
            cfg.process_id,
            cfg.deterministic,
            cfg.tpu,
        )

    def noise_scale_problem(self) -> Optional[str]:
        # Its measurements differentiate the global model on this process's
        # rows alone; across processes that would take a collective of its own.
        if self.num_processes > 1:
            return (
                f"--log_noise_scale measures with one JAX process, not {self.num_processes}: "
                "measure on one host (its devices split the batch), then train on all"
            )
        return None

    def watch_peers(self, on_lost: Callable[[str, float], None]) -> None:
        """With several processes, tf_lars's heartbeats (`heartbeat`): a frozen
        process ends the others within seconds, not jax.distributed's abort."""
        if self.num_processes == 1:
            return
        from jax._src import distributed

        from tf_lars.training.engines.heartbeat import Heartbeat

        client = distributed.global_state.client
        self._heartbeat = Heartbeat(client, self.process_id, self.num_processes, on_lost)
        self._heartbeat.start()

    def stop_watching(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()

    def preemption_channel(self) -> dict[str, Any]:
        """With several processes, JAX's agreement on where to stop after a
        SIGTERM reaches any of them (`Preemption`'s `sync_point`)."""
        if self.num_processes == 1:
            return {}
        from jax.experimental import multihost_utils

        return {"sync_point": multihost_utils.reached_preemption_sync_point}

    @property
    def chief(self) -> bool:  # type: ignore[override]
        """Process 0 writes the model directory."""
        return self.process_id == 0

    def jit_compile(self, requested: bool) -> bool:
        return True  # Eager JAX runs op by op.

    @property
    def callbacks_on_every_process(self) -> bool:
        # Reading the model's state between steps is a collective here.
        return True

    def backup_mirror_dir(self, scratch_dir: str) -> Optional[str]:
        return os.path.join(scratch_dir, "backup")

    def op_errors(self) -> tuple[type[BaseException], ...]:
        return super().op_errors() + (runtime_error(),)

    def lost_peer(self, error: BaseException) -> Optional[str]:
        if self.num_processes == 1:
            return None
        return faults.worker_failure(error, f"process {self.process_id}")

    def exit_with(self, line: str) -> None:
        if self.num_processes == 1:
            super().exit_with(line)
        # At exit jax.distributed would wait for the lost process until its
        # heartbeat times out (about 100 s), then abort with a stack dump:
        # leave now, the backups being written already.
        print(f"tf-lars-train: error: {line}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)

    def synthetic_batches(
        self, data: Any, global_batch: int, steps: int, skip_steps: int
    ) -> Optional[Any]:
        """Synthetic data from numpy (no TensorFlow needed): each process makes
        its own rows of every global batch."""
        from tf_lars.training import inputs

        return inputs.SyntheticBatches(
            data, global_batch, steps, self.process_id, self.num_processes, skip_steps
        )

    def input_context(self) -> Any:
        """This process as a `tf.distribute.InputContext`: one input pipeline
        per process, each batching `global batch / processes` examples."""
        import tensorflow as tf

        return tf.distribute.InputContext(
            num_input_pipelines=self.num_processes,
            input_pipeline_id=self.process_id,
            num_replicas_in_sync=self.num_processes,
        )

    def distribute(self, dataset_fn: Callable[[Any], Any]) -> Any:
        return dataset_fn(self.input_context())

    def describe(self) -> str:
        return (
            f"JAX: {self.num_replicas_in_sync} devices ({self.devices[0].split(':')[0]})"
            f" in {self.num_processes} processes, this is process {self.process_id}"
            if self.num_processes > 1
            else f"JAX: {self.num_replicas_in_sync} devices ({self.devices[0].split(':')[0]})"
        )


ENGINE = JaxEngine
