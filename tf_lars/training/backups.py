"""Versioned backups: each written beside the last, committed by one file.

    backup/step-0000001200/model.weights.h5
    backup/step-0000001200/training_metadata.json   <- written last: the commit
    backup/step-0000001300/...

A version counts once its `training_metadata.json` exists: that file is
written after the weights, through a rename on local disks (a single object
write on `gs://`, which appears whole or not at all), and records the
weights file's size and SHA-256. A run killed while writing (SIGKILL, an
out-of-memory kill, a full disk) leaves a version without metadata, or
weights that do not match it; `latest` skips such a version, names it in
one warning line and returns the one before. After each commit the last
`keep` whole versions are kept and every other one removed.

On a local disk the weights are flushed to the device (`fsync`) before the
commit, so a power cut cannot leave a committed version whose weights are
still in the page cache. Through `tf.io.gfile` on `gs://` a rename is a copy
and a delete, but the commit needs no rename to be atomic: the metadata is
one object, written whole.

Backups of older versions (`latest.weights.h5` and `training_metadata.json`
directly in the folder) are read as one version, and removed once `keep`
new ones are whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
from typing import Any, Callable, Optional

from absl import logging

PREFIX = "step-"
WEIGHTS = "model.weights.h5"
METADATA = "training_metadata.json"
LEGACY_WEIGHTS = "latest.weights.h5"  # the layout of backups before versions


class LocalFiles:
    """The part of `tf.io.gfile`'s API used here, on local files (for the
    JAX engine without TensorFlow)."""

    exists = staticmethod(os.path.exists)
    listdir = staticmethod(os.listdir)
    remove = staticmethod(os.remove)

    @staticmethod
    def makedirs(path: str) -> None:
        os.makedirs(path, exist_ok=True)

    @staticmethod
    def rmtree(path: str) -> None:
        import shutil

        shutil.rmtree(path)

    @staticmethod
    def rename(src: str, dst: str, overwrite: bool = False) -> None:
        os.replace(src, dst)

    @staticmethod
    def GFile(path: str, mode: str = "r") -> Any:  # noqa: N802 (gfile's name)
        return open(path, mode)

    @staticmethod
    def stat(path: str) -> Any:
        found = os.stat(path)
        return types.SimpleNamespace(length=found.st_size, mtime_nsec=found.st_mtime_ns)


def files() -> Any:
    """TensorFlow's file API (remote paths like gs:// too), or `LocalFiles`
    without TensorFlow."""
    try:
        import tensorflow as tf
    except ImportError:
        return LocalFiles
    return tf.io.gfile


def is_local(path: str) -> bool:
    return "://" not in path


def write_text_atomically(path: str, text: str) -> None:
    """Writes `path` through a rename: readers see the old text or the new."""
    fs, partial = files(), path + ".partial"
    fs.makedirs(os.path.dirname(path))
    with fs.GFile(partial, "w") as f:
        f.write(text)
    fs.rename(partial, path, overwrite=True)


@dataclasses.dataclass(frozen=True)
class Version:
    """One whole backup: its weights file and what its metadata says
    (`epoch`, `batch`, `step`, `seconds`; see `checkpoints.read_backup`)."""

    weights: str
    metadata: dict[str, Any]

    @property
    def name(self) -> str:
        return os.path.basename(os.path.dirname(self.weights))


class BackupError(RuntimeError):
    """A backup could not be written; the versions before it are intact."""


def version_folders(backup_dir: str) -> list[str]:
    """The versions' folders in `backup_dir`, newest (largest step) first."""
    fs = files()
    if not fs.exists(backup_dir):
        return []
    names = [n.rstrip("/") for n in fs.listdir(backup_dir)]
    ours = sorted((n for n in names if n.startswith(PREFIX)), reverse=True)
    return [os.path.join(backup_dir, n) for n in ours]


def digest(path: str) -> tuple[int, str]:
    """The size of the file at `path` and its SHA-256 (hex)."""
    digest, size = hashlib.sha256(), 0
    with files().GFile(path, "rb") as f:
        while True:
            chunk = f.read(1 << 22)
            if not chunk:
                return size, digest.hexdigest()
            size += len(chunk)
            digest.update(chunk)


# (folder, metadata, weights' size and time) -> problem: a file is hashed once.
_checked: dict[tuple[str, str, int, int], Optional[str]] = {}
_warned: set[tuple[str, str]] = set()  # (folder, problem) named in a warning


def forget() -> None:
    """Forgets the versions this process verified (each is hashed once per
    process, since a version's files are written once: a restarted run
    starts without this memory)."""
    _checked.clear()
    _warned.clear()


def _key(folder: str, text: str) -> tuple[str, str, int, int]:
    found = files().stat(os.path.join(folder, WEIGHTS))
    return folder, text, int(found.length), int(found.mtime_nsec)


def problem(folder: str) -> Optional[str]:
    """Why the version in `folder` cannot be resumed, or None when whole."""
    fs = files()
    meta, weights = os.path.join(folder, METADATA), os.path.join(folder, WEIGHTS)
    try:
        if not fs.exists(meta):
            return f"it has no {METADATA}: its write was cut short"
        if not fs.exists(weights):
            return f"its {WEIGHTS} is missing"
        with fs.GFile(meta) as f:
            text = f.read()
        key = _key(folder, text)
        if key not in _checked:
            expected = json.loads(text)["weights"]
            size, sha = digest(weights)
            _checked[key] = (
                None
                if (size, sha) == (expected["bytes"], expected["sha256"])
                else f"{WEIGHTS} is {size} bytes and not the {expected['bytes']} bytes written"
                if size != expected["bytes"]
                else f"{WEIGHTS} does not match the SHA-256 written"
            )
        return _checked[key]
    except (OSError, ValueError, KeyError, TypeError) as e:
        # (tf.errors.OpError subclasses none of these: a lost file names itself)
        return f"it cannot be read ({type(e).__name__}: {e})"
    except Exception as e:  # noqa: BLE001 (tf.errors.NotFoundError and kin)
        return f"it cannot be read ({type(e).__name__})"


def latest(backup_dir: str) -> Optional[Version]:
    """The newest whole version in `backup_dir`, or None.

    Each newer version that is not whole (see `problem`) is named in one
    warning line, once per process.
    """
    for folder in version_folders(backup_dir):
        why = problem(folder)
        if why is None:
            with files().GFile(os.path.join(folder, METADATA)) as f:
                return Version(os.path.join(folder, WEIGHTS), json.loads(f.read()))
        if (folder, why) not in _warned:
            _warned.add((folder, why))
            logging.warning(
                "backup %s is damaged (%s): resuming from the one before it", folder, why
            )
    return _legacy(backup_dir)


def _legacy(backup_dir: str) -> Optional[Version]:
    """A backup of the layout before versions, as Keras's callback wrote it."""
    fs, meta = files(), os.path.join(backup_dir, METADATA)
    if not fs.exists(meta):
        return None
    with fs.GFile(meta) as f:
        return Version(os.path.join(backup_dir, LEGACY_WEIGHTS), json.loads(f.read()))


def write(
    backup_dir: str, save_weights: Callable[[str], None], metadata: dict[str, Any], keep: int
) -> Version:
    """Writes a version at `metadata["step"]` and commits it; keeps `keep`.

    `save_weights(path)` writes the weights file. Raises `BackupError` when
    any write fails (the new version's files are then removed, the older
    versions untouched).
    """
    fs = files()
    folder = os.path.join(backup_dir, f"{PREFIX}{int(metadata['step']):010d}")
    weights = os.path.join(folder, WEIGHTS)
    try:
        if fs.exists(folder):  # A cut or damaged version of the same step.
            fs.rmtree(folder)
        fs.makedirs(folder)
        save_weights(weights)
        if is_local(weights):
            with open(weights, "rb+") as f:
                os.fsync(f.fileno())
        size, sha = digest(weights)
        text = json.dumps(dict(metadata, weights={"bytes": size, "sha256": sha}))
        write_text_atomically(os.path.join(folder, METADATA), text)
    except OSError as e:
        _remove(folder)
        raise BackupError(_failure(backup_dir, e)) from e
    _checked[_key(folder, text)] = None
    prune(backup_dir, keep)
    return Version(weights, json.loads(text))


def _failure(backup_dir: str, error: OSError) -> str:
    before = latest(backup_dir)
    kept = (
        f"the last backup (step {before.metadata.get('step')}) is intact"
        if before
        else "no earlier backup exists"
    )
    return (
        f"could not write a backup in {backup_dir} ({error.strerror or error}); {kept}: "
        "free space or fix the folder, then run the same command to resume"
    )


def _remove(folder: str) -> None:
    """Removes a version: its commit first, so a cut removal leaves it uncommitted."""
    fs = files()
    try:
        meta = os.path.join(folder, METADATA)
        if fs.exists(meta):
            fs.remove(meta)
        if fs.exists(folder):
            fs.rmtree(folder)
    except OSError as e:  # (on a full disk even a removal may fail: leave it)
        logging.warning("could not remove %s: %s", folder, e)


def prune(backup_dir: str, keep: int) -> None:
    """Keeps the newest `keep` whole versions; removes every other version
    (older, damaged or cut) and, once `keep` are whole, an older layout's files."""
    whole = 0
    for folder in version_folders(backup_dir):
        if whole < keep and problem(folder) is None:
            whole += 1
        else:
            _remove(folder)
    if whole >= keep:
        fs = files()
        for name in (METADATA, LEGACY_WEIGHTS):
            path = os.path.join(backup_dir, name)
            if fs.exists(path):
                fs.remove(path)
