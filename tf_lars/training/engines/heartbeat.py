"""Frozen processes under JAX: tf_lars's own heartbeats between processes.

A process that is frozen (SIGSTOP, a host that stopped scheduling it) is not
a dead one: its sockets stay open, and the other processes wait in their
next collective. `jax.distributed`'s service notices the missing heartbeats
only after `heartbeat_timeout_seconds` (100 s by default) and then aborts
every process with a stack dump. Here each process instead counts beats
into the service's key-value store every `INTERVAL` seconds and reads the
others'; a process whose count has not moved for `TIMEOUT` seconds is
named, and this process ends (`on_lost`) within `TIMEOUT + INTERVAL`
seconds of the freeze. When the store itself stops answering (the
coordinator, process 0, is the one frozen) the same bound holds.

A process that ends normally writes `done` first, so the others stop
watching it. Under tf.distribute the coordination service does the same
(its heartbeat timeout, 10 s by default), and the error it raises is
explained like a lost worker's.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

INTERVAL = 1.0  # seconds between beats
TIMEOUT = 15.0  # seconds a count may stand still before its process counts as frozen
_DIR = "tf_lars/heartbeat/"
DONE = "done"


class Heartbeat:
    """Beats for process `process_id` of `num_processes` through `client`
    (`jax.distributed`'s), and calls `on_lost("process N", seconds)` once
    when a peer's count stood still for `seconds`."""

    def __init__(
        self,
        client: Any,
        process_id: int,
        num_processes: int,
        on_lost: Callable[[str, float], None],
        timeout: float = TIMEOUT,
        interval: float = INTERVAL,
    ) -> None:
        self.client, self.process_id = client, process_id
        self.peers = [p for p in range(num_processes) if p != process_id]
        self.on_lost, self.timeout, self.interval = on_lost, timeout, interval
        now = time.monotonic()
        self.seen: dict[int, tuple[Optional[str], float]] = {p: (None, now) for p in self.peers}
        self.answered = now  # when the store last answered a whole round
        self.stopped = threading.Event()

    def start(self) -> Heartbeat:
        for target in (self._beat, self._judge):
            threading.Thread(target=target, daemon=True, name="tf_lars-heartbeat").start()
        return self

    def stop(self) -> None:
        """Stops watching; the others stop watching this process."""
        if not self.stopped.is_set():
            self.stopped.set()
            try:
                self.client.key_value_set(f"{_DIR}{self.process_id}", DONE, allow_overwrite=True)
            except Exception:  # noqa: BLE001 (the service may have ended first)
                pass

    def _beat(self) -> None:
        """Counts this process's beats and reads the others' (one thread)."""
        count = 0
        while not self.stopped.wait(self.interval):
            count += 1
            try:
                self.client.key_value_set(
                    f"{_DIR}{self.process_id}", str(count), allow_overwrite=True
                )
                beats = dict(self.client.key_value_dir_get(_DIR))
            except Exception:  # noqa: BLE001 (the judge notices the silence)
                continue
            now = time.monotonic()
            for peer in self.peers:
                value = beats.get(f"{_DIR}{peer}")
                if value != self.seen[peer][0]:
                    self.seen[peer] = (value, now)
            self.answered = now

    def _judge(self) -> None:
        """Ends the run once a peer's count stood still too long (one thread:
        the beats' thread may hang in a call to a frozen coordinator)."""
        while not self.stopped.wait(self.interval):
            now = time.monotonic()
            if now - self.answered > self.timeout and self.process_id != 0:
                return self._lost("process 0 (the coordinator)")
            for peer, (value, since) in self.seen.items():
                # Stood still while the store kept answering: a silent store
                # is the coordinator's fault, not this peer's.
                if value != DONE and self.answered - since > self.timeout:
                    return self._lost(f"process {peer}")

    def _lost(self, who: str) -> None:
        self.stopped.set()
        self.on_lost(who, self.timeout)
