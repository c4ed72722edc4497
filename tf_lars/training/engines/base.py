"""What the trainer asks of the engine it runs on.

The trainer, its callbacks, checkpoints and fault handling ask an `Engine`,
never which Keras backend they run on; each backend's answers live in its
own module (`tensorflow.py`, `jax.py`), chosen once by `engines.make`.
"""

from __future__ import annotations

import abc
import contextlib
from typing import Any, Callable, Optional

from tf_lars.training.config import TrainConfig


class Engine(abc.ABC):
    """One way of running a training program on devices and hosts.

    Attributes:
        num_replicas_in_sync: replicas a global batch is split between.
        chief: whether this process writes the run folder.
        peer, peers: what one of several hosts is called in messages ("worker").
    """

    num_replicas_in_sync: int
    chief: bool
    peer: str = "worker"
    peers: str = "workers"

    @abc.abstractmethod
    def describe(self) -> str:
        """A line for the log: devices, hosts and this process's place."""

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        """Where the model and its optimizer are built."""
        return contextlib.nullcontext()

    def jit_compile(self, requested: bool) -> bool:
        """Whether the train step is compiled, given `--jit_compile`."""
        return requested

    @abc.abstractmethod
    def distribute(self, dataset_fn: Callable[[Any], Any]) -> Any:
        """The input of every local replica from `dataset_fn`, a function of a
        `tf.distribute.InputContext` that returns this pipeline's dataset."""

    def synthetic_batches(
        self, data: Any, global_batch: int, steps: int, skip_steps: int
    ) -> Optional[Any]:
        """Synthetic data made without TensorFlow, or None to make it with
        `tf.data` like any other input."""
        return None

    @property
    def callbacks_on_every_process(self) -> bool:
        """Whether every process must run the chief's callbacks (when reading
        the model's state between steps is a collective)."""
        return False

    def backup_mirror_dir(self, scratch_dir: str) -> Optional[str]:
        """Where the other processes save the weights the chief backs up, when
        saving is a collective they must join; None when they need not."""
        return None

    def noise_scale_problem(self) -> Optional[str]:
        """Why `--log_noise_scale` cannot run on this engine, or None."""
        return None

    def watch_peers(self, on_lost: Callable[[str, float], None]) -> None:
        """Calls `on_lost(peer, seconds)` when a peer stops answering for
        `seconds` while staying alive (frozen). Nothing by default: under
        tf.distribute the coordination service raises an error the trainer
        explains."""
        return None

    def stop_watching(self) -> None:
        """This process ends normally: the peers stop watching it."""
        return None

    def preemption_channel(self) -> dict[str, Any]:
        """`faults.Preemption`'s keyword arguments that make the processes agree
        on the step to stop at after a SIGTERM (empty for one process)."""
        return {}

    def op_errors(self) -> tuple[type[BaseException], ...]:
        """The exceptions a failed computation, input or lost peer raise."""
        from tf_lars.training.engines import has_tensorflow

        if not has_tensorflow():
            return ()
        import tensorflow as tf

        return (tf.errors.OpError,)

    def lost_peer(self, error: BaseException) -> Optional[str]:
        """Which peer `error` says stopped answering ('' when it names none);
        None when the error is not a lost peer, or there are no peers."""
        return None

    def exit_with(self, line: str) -> None:
        """Ends the process with `line`, an error the user can act on."""
        import sys

        sys.exit(f"tf-lars-train: error: {line}")

    @staticmethod
    def from_config(cfg: TrainConfig) -> Engine:
        """The engine of `cfg` on this backend (see `engines.make`)."""
        raise NotImplementedError
