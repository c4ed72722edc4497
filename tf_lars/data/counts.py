"""What the input pipelines skipped, counted per split.

Apart from `pipeline.py` so that code without TensorFlow (the trainer's JAX
engine on synthetic data, which skips nothing) can hold an empty count;
TensorFlow is imported when a split is first counted.
"""

import os


class SplitCounts:
    """What one split's pipelines read: usable records and each kind of bad
    input, with the last shard where each kind was seen (host variables)."""

    def __init__(self, split):
        import tensorflow as tf

        self.split = split
        with tf.init_scope(), tf.device("CPU:0"):
            self.usable = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.counts = {
                k: tf.Variable(0, dtype=tf.int64, trainable=False) for k in BadRecords.KINDS
            }
            self.shards = {
                k: tf.Variable("", dtype=tf.string, trainable=False) for k in BadRecords.KINDS
            }

    def count(self, kind, flags, shard):
        """Counts the true ones of `flags` (bools) as `kind`, seen in `shard`;
        returns the kind's new count."""
        import tensorflow as tf

        n = tf.reduce_sum(tf.cast(flags, tf.int64))
        tf.cond(n > 0, lambda: self.shards[kind].assign(shard, read_value=False), tf.no_op)
        return self.counts[kind].assign_add(n)

    def result(self):
        return {k: int(v.numpy()) for k, v in self.counts.items()}

    def last_shards(self):
        return {k: v.numpy().decode() for k, v in self.shards.items()}


class BadRecords:
    """What the pipelines skipped, counted per split (`SplitCounts`).

    `result()` gives the totals by kind; `describe()` a line for people.
    """

    KINDS = ("damaged_shards", "bad_images", "bad_labels")
    WORDS = {
        "damaged_shards": "damaged shards",
        "bad_images": "records without a whole JPEG",
        "bad_labels": "records with labels out of range",
    }
    WORD = {
        "damaged_shards": "damaged shard",
        "bad_images": "record without a whole JPEG",
        "bad_labels": "record with a label out of range",
    }

    def __init__(self):
        self.splits = {}

    def split(self, name):
        if name not in self.splits:
            self.splits[name] = SplitCounts(name)
        return self.splits[name]

    def result(self, split=None):
        """`{kind: count}`, over every split or for one."""
        parts = [self.splits[split]] if split else list(self.splits.values())
        return {k: sum(p.result()[k] for p in parts) for k in self.KINDS}

    def describe(self, split):
        """E.g. '3 records with labels out of range (last in train-00002-of-00004)'."""
        counts = self.splits[split]
        shards = counts.last_shards()
        return "; ".join(
            f"{self.say(k, n)} (last in {os.path.basename(shards[k])})"
            for k, n in counts.result().items()
            if n
        )

    @classmethod
    def say(cls, kind, n):
        """'1 damaged shard', '3 damaged shards'."""
        return f"{n} {cls.WORDS[kind] if n != 1 else cls.WORD[kind]}"


__all__ = ["BadRecords"]
