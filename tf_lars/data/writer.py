"""Writing TFRecord shards: in parallel, restartable, never half-written.

Each shard is written to `NAME.tmp-PID` and renamed when complete, so a shard
that exists is finished and a second run skips it. Items that cannot be
encoded are reported at the end instead of stopping the build.
"""

import multiprocessing
import os
from typing import Any

import keras
import tensorflow as tf

from tf_lars.data import schema


def _write_shard(task):
    """Writes one shard; returns `(path, written, [(item_name, error), ...])`."""
    path, items, encode = task
    failures, written = [], 0
    tmp = f"{path}.tmp-{os.getpid()}"
    with tf.io.TFRecordWriter(tmp) as writer:
        for item in items:
            try:
                example = encode(item)
            except Exception as e:  # An unreadable image is reported, not fatal.
                failures.append(
                    (
                        str(item[0]) if isinstance(item, tuple) else str(item),
                        f"{type(e).__name__}: {str(e).splitlines()[0][:200]}",
                    )
                )
                continue
            writer.write(example.SerializeToString())
            written += 1
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path, written, failures


def build_shards(output_dir, split, items, num_shards, encode, processes=1, progress=True):
    """Writes `items` (already in their final order) as `num_shards` shards.

    `encode(item)` returns a `tf.train.Example` (a module-level function, so
    worker processes can receive it). Shard `i` holds a contiguous slice of
    `items`. Returns `(records_written, failures, shards_skipped)`.

    Args:
        output_dir: where the shards go (finished ones are kept: a build resumes).
        split: the shards' name prefix (`shard_name`).
        items: what `encode` turns into records.
        num_shards: shards to write.
        encode: see above.
        processes: worker processes. Defaults to 1.
        progress: whether to show a progress bar. Defaults to True.
    """
    if num_shards < 1 or num_shards > max(1, len(items)):
        raise ValueError(
            f"num_shards={num_shards} must be between 1 and the number of items ({len(items)})"
        )
    tf.io.gfile.makedirs(output_dir)
    bounds = [len(items) * i // num_shards for i in range(num_shards + 1)]
    tasks, skipped = [], 0
    for i in range(num_shards):
        path = os.path.join(output_dir, schema.shard_name(split, i, num_shards))
        if tf.io.gfile.exists(path):
            skipped += 1  # Finished by an earlier run (written atomically).
            continue
        tasks.append((path, items[bounds[i] : bounds[i + 1]], encode))
    bar = keras.utils.Progbar(len(tasks), unit_name="shard") if progress and tasks else None
    written, failures = 0, list[Any]()
    if processes > 1 and len(tasks) > 1:
        # spawn, not fork: TensorFlow's runtime does not survive a fork.
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            results = pool.imap_unordered(_write_shard, tasks)
            for done, (_, n, failed) in enumerate(results, 1):
                written, failures = written + n, failures + failed
                bar and bar.update(done)
    else:
        for done, task in enumerate(tasks, 1):
            _, n, failed = _write_shard(task)
            written, failures = written + n, failures + failed
            bar and bar.update(done)
    return written, failures, skipped


__all__ = ["build_shards"]
