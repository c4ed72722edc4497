"""One trainer per run folder: a lock file held by the chief.

`--model_dir/run.lock` names its holder (host, process id, the process's
start on that host, the time it was taken). A second trainer on the folder
is refused with one line naming the holder. A lock whose holder is gone
(same host, no such process, or another process under its id) is taken
over with a warning line; a lock of another host cannot be judged from here
and needs `--force_unlock`.

On a local disk (and on NFS v3+, whose exclusive create is atomic) the lock
is taken with an exclusive create: of two trainers started together, one
wins. Through `tf.io.gfile` (`gs://`) there is no exclusive create: the lock
is written, then read back, which refuses a trainer that starts after
another has taken it but not two that start within the same second.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import uuid
from typing import Any, Optional

from absl import logging

from tf_lars.training import backups

NAME = "run.lock"


def _started(pid: int) -> Optional[str]:
    """When process `pid` started (Linux: clock ticks since boot), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # (another user's process)
        return True
    return True


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lock: enough to tell whether it still runs."""

    host: str
    pid: int
    started: Optional[str]  # the process's start, as `_started` reads it
    since: str  # when it took the lock (local time, for people)
    token: str  # tells this holder from a later one with the same pid

    @staticmethod
    def me() -> Holder:
        pid = os.getpid()
        return Holder(
            socket.gethostname(),
            pid,
            _started(pid),
            time.strftime("%Y-%m-%d %H:%M:%S"),
            uuid.uuid4().hex,
        )

    def gone(self) -> bool:
        """True when this holder surely ended (this host only)."""
        if self.host != socket.gethostname():
            return False
        if not _alive(self.pid):
            return True
        return self.started is not None and _started(self.pid) not in (None, self.started)

    def describe(self) -> str:
        return f"process {self.pid} on {self.host}, started {self.since}"


class RunLock:
    """The lock on `model_dir`; `acquire` takes it or raises ValueError."""

    def __init__(self, model_dir: str, force: bool = False) -> None:
        self.path = os.path.join(model_dir, NAME)
        self.force = force
        self.me = Holder.me()
        self.held = False

    def _read(self) -> Optional[Holder]:
        fs = backups.files()
        try:
            with fs.GFile(self.path) as f:
                return Holder(**json.loads(f.read()))
        except Exception:  # noqa: BLE001 (gone, or cut: judged by the caller)
            return None

    def _create(self) -> bool:
        """Writes the lock if there is none; whether this process holds it."""
        text = json.dumps(dataclasses.asdict(self.me))
        if backups.is_local(self.path):
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return True
        fs = backups.files()
        if fs.exists(self.path):
            return False
        backups.write_text_atomically(self.path, text)
        return self._read() == self.me

    def acquire(self) -> None:
        """Takes the lock: refuses (ValueError, one line) while another
        trainer holds it; takes over a holder that is gone, with a warning."""
        for _ in range(3):  # (a lock removed between our two looks: look again)
            if self._create():
                self.held = True
                return
            holder = self._read()
            if holder is None and self._exists():
                time.sleep(1)  # (a lock being written this moment: look once more)
                holder = self._read()
            if holder is None:
                if not self._exists():
                    continue
                why = "it cannot be read"
            elif holder.gone():
                why = f"its holder, {holder.describe()}, has ended"
            elif self.force:
                why = f"--force_unlock (it was held by {holder.describe()})"
            else:
                raise ValueError(self._refusal(holder))
            logging.warning("taking over the lock %s: %s", self.path, why)
            self._remove()
        raise ValueError(f"could not take the lock {self.path}: other trainers keep taking it")

    def _refusal(self, holder: Holder) -> str:
        there = (
            "wait for it to end or give another --model_dir"
            if holder.host == self.me.host
            else "if that trainer has ended (its host cannot be asked from here), "
            "start again with --force_unlock; else give another --model_dir"
        )
        return (
            f"--model_dir {os.path.dirname(self.path)} is in use by another trainer "
            f"({holder.describe()}; lock {self.path}): {there}"
        )

    def _exists(self) -> bool:
        return bool(backups.files().exists(self.path))

    def _remove(self) -> None:
        try:
            backups.files().remove(self.path)
        except Exception:  # noqa: BLE001 (removed already)
            pass

    def release(self) -> None:
        """Removes the lock if this process still holds it."""
        if self.held and self._read() == self.me:
            self._remove()
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
