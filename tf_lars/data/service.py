"""Training input decoded on other machines: the tf.data service.

A dispatcher and decoding workers run on CPU machines
(`python tools/data_service.py dispatcher|worker`); the trainer, given
`--data_service=HOST:PORT`, sends its training pipeline to them and reads
finished batches over gRPC. The pipeline is the same (`pipeline.make_dataset`)
but runs on the workers, which read the shards by the same paths (a shared
file system or `gs://`).

Sharing: every consumer of a run (each MultiWorkerMirroredStrategy worker,
each JAX process) joins one job, named after the run folder and the step it
starts at, in the service's dynamic sharding mode (`distributed_epoch`): the
dispatcher hands out shards one at a time to whichever worker asks, so
each record is read once per pass over the shards across all workers and
consumers, as long as no worker fails; a worker that dies loses the records
it held (its prefetched batches and the rest of its shard), and the others
go on. Evaluation stays in the trainer's process.

What the trainer cannot do through the service: count skipped records
(they are counted in the workers' processes), make the order repeatable
(workers race for shards: `--deterministic` is refused), resume a seeded
stream at its step (a resumed run starts a new job), or stop at a bad
record with the shard named (`--strict_data` is refused).
"""

from __future__ import annotations

import hashlib
import socket
from typing import Any

import tensorflow as tf

CONNECT_TIMEOUT = 10.0  # seconds a dispatcher has to accept a connection


def address(text: str) -> str:
    """`HOST:PORT` or `grpc://HOST:PORT` as the service's target."""
    return text if "://" in text else f"grpc://{text}"


def check_answers(text: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Raises ValueError (one line) unless a dispatcher accepts connections
    at `text` within `timeout` seconds (the service's own client would retry
    for ever)."""
    target = address(text).split("://", 1)[1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--data_service={text}: give HOST:PORT of the dispatcher")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        reason = "timed out" if isinstance(e, socket.timeout) else (e.strerror or str(e))
        raise ValueError(
            f"--data_service={text} does not answer ({reason}, after "
            f"{timeout:.0f} s at most): start its dispatcher (python tools/data_service.py "
            "dispatcher) or fix the address"
        ) from None


def job_name(model_dir: str, skip_steps: int) -> str:
    """The job every consumer of a run joins (the same on every worker)."""
    run = hashlib.sha1(model_dir.encode()).hexdigest()[:12]
    return f"tf_lars-{run}-{skip_steps}"


def distribute(ds: Any, service: str, job: str) -> Any:
    """`ds` run by the service at `service`, shared by the consumers of `job`."""
    return ds.apply(
        tf.data.experimental.service.distribute(
            processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC,
            service=address(service),
            job_name=job,
        )
    )


__all__ = ["address", "check_answers", "job_name", "distribute"]
