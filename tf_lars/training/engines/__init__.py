"""The engine `tf-lars-train` runs on, chosen once, by KERAS_BACKEND.

* `tensorflow`: a `tf.distribute` strategy (`tensorflow.TensorFlowEngine`).
* `jax`: `keras.distribution` over every device of every process
  (`jax.JaxEngine`).

This is the one place that asks which backend Keras runs: everything else
asks the `Engine` (see `base.py`) what it needs to know.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

import keras

from tf_lars.training.config import TrainConfig
from tf_lars.training.engines.base import Engine

# Keras backend -> the module of its engine. (torch: accelerators only; the
# trainer has no torch engine, the study's in-memory runs use any backend.)
_MODULES = {
    "tensorflow": "tf_lars.training.engines.tensorflow",
    "jax": "tf_lars.training.engines.jax",
}


def _module() -> Any:
    backend = keras.backend.backend()
    if backend not in _MODULES:
        raise ValueError(f"KERAS_BACKEND={backend}: tf-lars-train runs on tensorflow or jax")
    return importlib.import_module(_MODULES[backend])


def make(cfg: TrainConfig) -> Engine:
    """The engine for `cfg` on this process's Keras backend.

    Call it before anything else asks the backend for its devices: it splits
    the CPU into `cfg.cpu_devices` devices and sets determinism and the
    collectives up.
    """
    engine: Engine = _module().ENGINE.from_config(cfg)
    return engine


def has_tensorflow() -> bool:
    """Whether TensorFlow can be imported (the JAX engine runs without it)."""
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except ImportError:  # (an import hook that refuses it)
        return False


def _torch_accelerators() -> list[str]:
    import torch

    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def machine() -> dict[str, Any]:
    """What this process runs on, for a run's summary: its CPU cores and the
    accelerators this host's backend sees (device kinds, e.g. 'NVIDIA H200')."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    backend = keras.backend.backend()
    if backend in _MODULES:
        kinds = _module().accelerators()
    else:
        kinds = _torch_accelerators() if backend == "torch" else []
    return dict(cpu_cores=cores, accelerators=kinds)


def describe_machine(record: dict[str, Any]) -> str:
    """'2 CPU cores' or '16 CPU cores, 1 x NVIDIA H200', from `machine()`'s record."""
    text = f"{record['cpu_cores']} CPU cores"
    for kind in sorted(set(record["accelerators"])):
        text += f", {record['accelerators'].count(kind)} x {kind}"
    return text
