"""`tf.data` input pipelines over TFRecord shards, for `tf.distribute`.

One stage a line over an `InputSpec` (see `make_dataset`): the shards of
this pipeline (listed, split between workers, shuffled) -> their records
(interleaved readers that parse and check a chunk of records at a time,
counting the bad ones) -> shuffle and repeat -> the usable ones kept ->
decode and augment -> batch per replica and prefetch. Use it as

```python
spec = InputSpec(data_dir, "train", training=True, image_size=224)
strategy.distribute_datasets_from_function(
    lambda ctx: make_dataset(spec, global_batch_size, input_context=ctx))
```

Bad input does not end a run. A shard that is truncated or corrupt keeps the
records before the damage; a record whose JPEG is not whole or whose label is
outside [0, num_classes) is dropped. Each is counted, per split and with the
last shard where it was seen, in a `BadRecords` (the trainer prints it and
writes it to TensorBoard). With `strict=True` each of these raises instead,
naming the shard (`explain` turns the error into one line).

"Whole" means: starts with the JPEG start-of-image marker (FF D8) and holds
an end-of-image marker (FF D9) after it. That catches records that are not
JPEGs and JPEGs cut short. Bytes after the end marker (camera and editor
trailers) are allowed: TensorFlow decodes such files whole; so are
progressive, grayscale and CMYK JPEGs. The check cannot
see damage inside the entropy-coded data (it decodes, with a libjpeg warning,
into wrong pixels), nor a cut-short file that still holds an end marker from
an embedded thumbnail (it fails to decode; tf.data drops it with a logged
warning, and it is not counted), nor a record that is not a
`tf.train.Example` at all (its chunk of 64 records fails to parse and is
dropped with a logged warning: only a writer of other payloads makes
such shards). Skipped evaluation records are counted as
the evaluation reads them: a repeating pipeline reads ahead, so a small
split's counts can cover more than one pass.

A split that yields no usable record at all (every label out of range, as
with a wrong label offset or TFDS's unlabelled `test` split) would make a
repeating pipeline spin forever; after `max_unusable` records without a
usable one the pipeline fails instead, and `explain` says what was dropped.
"""

import dataclasses
import os
import re
from typing import Any, Optional

import tensorflow as tf

from tf_lars.data import preprocessing
from tf_lars.data import schema as schemas
from tf_lars.data.counts import BadRecords

AUTOTUNE = tf.data.AUTOTUNE
RECORD_OVERHEAD = 16  # TFRecord framing: length (8) + 2 CRCs (4 + 4) bytes.
# Read buffer for remote file systems (`gs://...`: few large reads); local
# files read faster with TFRecordDataset's own 256 KiB buffer.
REMOTE_READ_BUFFER = 8 << 20


# Tags of the pipeline's assertions, read back by `explain`.
_TAG_DAMAGED = "tf_lars: damaged shard"
_TAG_IMAGE = "tf_lars: not a whole JPEG"
_TAG_LABEL = "tf_lars: label out of range"
_TAG_UNUSABLE = "tf_lars: no usable record"
# What `_check` finds a record to be.
BAD, USABLE, GIVE_UP = 0, 1, 2


def explain(
    error: BaseException,
    data_dir: Optional[str] = None,
    num_classes: Optional[int] = None,
    label_offset: Optional[int] = None,
    bad_records: Optional[BadRecords] = None,
) -> Optional[str]:
    """One line for a pipeline assertion in `error` (an exception), or None.

    The flags that change the outcome are named as the trainer spells them.
    """
    text = str(error)
    for tag in (_TAG_DAMAGED, _TAG_IMAGE, _TAG_LABEL, _TAG_UNUSABLE):
        found = re.search(r"\[" + re.escape(tag) + r"\]((?: \[[^\]\n]*\])*)", text)
        if found:
            values = re.findall(r"\[([^\]\n]*)\]", found.group(1))
            break
    else:
        return None
    if tag == _TAG_DAMAGED:
        return (
            f"--strict_data: shard {values[0]} is truncated or corrupt: re-create it, "
            "or run without --strict_data to keep the records before the damage"
        )
    if tag == _TAG_IMAGE:
        return (
            f"--strict_data: a record of shard {values[0]} holds no whole JPEG: "
            "re-create the shard, or run without --strict_data to skip such records"
        )
    if tag == _TAG_LABEL:
        stored, classes, offset, shard = values
        return (
            f"--strict_data: a record of shard {shard} stores label {stored}, outside "
            f"{offset}..{int(classes) - 1 + int(offset)} (--num_classes={classes}, "
            f"--label_offset={offset}): check those two flags, or run without "
            "--strict_data to skip such records"
        )
    split, read, stored = values
    num_classes, label_offset = num_classes or 0, label_offset or 0
    counts = bad_records.describe(split) if bad_records and split in bad_records.splits else ""
    where = f" of {data_dir}" if data_dir else ""
    return (
        f"split {split!r}{where} has no usable record in the first {read} read "
        f"({counts or 'all dropped'}; last label stored: {stored}); labels must lie in "
        f"{label_offset}..{num_classes - 1 + label_offset} (--num_classes={num_classes}, "
        f"--label_offset={label_offset}): check those two flags and the split "
        "(TFDS's test split stores no labels, only -1)"
    )


def list_files(data_dir: str, split: str, data_format: str = "imagenet") -> list[str]:
    """Sorted shard paths of `split`; a clear error when there are none.

    The shards may sit in `data_dir` itself or in a subfolder named after
    the split (`train/`, `validation/`: tensorflow/tpu's imagenet_to_gcs.py
    writes them so).

    Args:
        data_dir: the folder of the shards (local or any `tf.io.gfile` path).
        split: "train", "validation", or another split's file prefix.
        data_format: "imagenet" (`train-00000-of-01024`) or "tfds"
            (`imagenet2012-train.tfrecord-00000-of-01024`).
    """
    schema = schemas.get(data_format)
    if not data_dir or not tf.io.gfile.isdir(data_dir):
        raise FileNotFoundError(
            f"data_dir {data_dir!r} is not a folder: pass the folder that holds "
            f"the {data_format} shards (tools/build_fashion_mnist_tfrecords.py "
            "and tools/build_imagenet_tfrecords.py make them)"
        )
    name = schema.pattern.format(split=split)
    pattern = os.path.join(data_dir, name)
    for candidate in (pattern, os.path.join(data_dir, split, name)):
        # Empty shards (imagenet_to_gcs.py writes many on small sets) hold nothing.
        files = sorted(f for f in tf.io.gfile.glob(candidate) if tf.io.gfile.stat(f).length)
        if files:
            return files
    if data_format != "tfds" and tf.io.gfile.glob(
        os.path.join(data_dir, "*.tfrecord-*")
    ) + tf.io.gfile.glob(os.path.join(data_dir, "*", "dataset_info.json")) + tf.io.gfile.glob(
        os.path.join(data_dir, "dataset_info.json")
    ):
        raise FileNotFoundError(
            f"{data_dir} holds TFDS shards, not {data_format} ones: use --data_format=tfds"
        )
    raise FileNotFoundError(
        f"no {split} shards match {pattern} (nor {os.path.join(split, name)} below it): is "
        f"data_dir right, and is data_format={data_format!r} the format of those shards?"
    )


def estimate_records(files: list[str], sample: int = 100) -> Optional[int]:
    """About how many records `files` hold: their bytes over the mean size of
    the first `sample` records of the first file (a few reads, not a pass)."""
    sizes = [
        len(r) + RECORD_OVERHEAD
        for r in tf.data.TFRecordDataset(files[0]).take(sample).ignore_errors().as_numpy_iterator()
    ]
    if not sizes:
        return None
    total = sum(tf.io.gfile.stat(f).length for f in files)
    return round(total / (sum(sizes) / len(sizes)))


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What one input pipeline reads and how (`make_dataset`'s stages read it).

    Attributes:
        data_dir, split, data_format: where the shards are (`list_files`).
        training: random crops, shuffling, endless repetition, full batches.
        image_size, channels, dtype: what the model eats.
        num_classes, label_offset: labels must fall in [0, num_classes) after
            subtracting the offset (default: the format's own).
        preset: preprocessing preset name (`preprocessing.PRESETS`), its
            numbers overridable by `preset_overrides` (a dict).
        shuffle_buffer: records in the shuffle buffer (training).
        seed: makes the whole pipeline deterministic (ordered, seeded).
        strict: raise, naming the shard, instead of skipping bad input.
        cache_eval: keep the decoded evaluation set in memory.
        repeat: repeat endlessly, in full batches (default: when training).
            Distributed evaluation repeats and runs a fixed number of steps,
            so that every worker runs the same number of batches.
        max_unusable: fail after this many records read without a usable
            one (a split whose every record is dropped would otherwise spin).
    """

    data_dir: str
    split: str
    training: bool
    image_size: int
    data_format: str = "imagenet"
    channels: int = 3
    dtype: Any = tf.float32
    num_classes: int = 1000
    label_offset: Optional[int] = None
    preset: str = "tpu"
    preset_overrides: Optional[dict] = None
    shuffle_buffer: int = 10_000
    seed: Optional[int] = None
    strict: bool = False
    cache_eval: bool = False
    repeat: Optional[bool] = None
    max_unusable: int = 1000

    @property
    def repeats(self) -> bool:
        return self.training if self.repeat is None else self.repeat

    @property
    def in_order(self) -> bool:
        """Seeded or evaluation pipelines keep their order."""
        return self.seed is not None or not self.training

    @property
    def offset(self) -> int:
        return (
            schemas.get(self.data_format).label_offset
            if self.label_offset is None
            else self.label_offset
        )


def make_dataset(
    spec: InputSpec,
    global_batch_size: int,
    input_context: Any = None,
    bad_records: Optional[BadRecords] = None,
    skip: int = 0,
) -> Any:
    """A batched `(images, labels)` dataset for one input pipeline, one stage a line.

    Args:
        spec: what to read and how.
        global_batch_size: divided by the replicas of `input_context`.
        input_context: a `tf.distribute.InputContext`; files are split
            between its input pipelines, and there must be at least one
            file for each.
        bad_records: a `BadRecords` to count skipped input in.
        skip: usable records to pass over before the first one used (a
            resumed run's position in a seeded stream); they are read and
            checked, not decoded.
    """
    context = input_context or tf.distribute.InputContext()
    counts = (bad_records or BadRecords()).split(spec.split)
    files = enough_files(spec, context)
    ds = shard_files(files, spec, context)
    ds = read_records(ds, spec, counts, cycle=min(16, len(files)), remote="://" in files[0])
    ds = shuffle_and_repeat(ds, spec)
    ds = keep_usable(ds)
    ds = decode(ds, spec, skip)
    return batch(ds, spec, context.get_per_replica_batch_size(global_batch_size))


def enough_files(spec: InputSpec, context: Any) -> list[str]:
    """Stage 1: the split's shards, at least one for each input pipeline."""
    files = list_files(spec.data_dir, spec.split, spec.data_format)
    if len(files) < context.num_input_pipelines:
        raise ValueError(
            f"{len(files)} {spec.split} shards in {spec.data_dir} for "
            f"{context.num_input_pipelines} workers: each worker needs at least "
            "one; write more shards (the builders' --num_shards)"
        )
    return files


def shard_files(files: list[str], spec: InputSpec, context: Any) -> Any:
    """Stage 2: this pipeline's share of the shards with their sizes,
    shuffled when training."""
    sizes = [tf.io.gfile.stat(f).length for f in files]
    ds = tf.data.Dataset.from_tensor_slices((files, tf.constant(sizes, tf.int64)))
    ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
    return ds.shuffle(len(files), seed=spec.seed) if spec.training else ds


def read_records(files: Any, spec: InputSpec, counts: Any, cycle: int, remote: bool) -> Any:
    """Stage 3: the records of `cycle` shards at a time, parsed and checked,
    `(jpeg, label, state[, boxes, box_count])`; the bad ones counted
    (`remote`: shards on a remote file system, read in large chunks)."""
    buffer_size = REMOTE_READ_BUFFER if remote else None
    return files.interleave(
        lambda f, n: _read_shard(f, n, spec, counts, buffer_size),
        cycle_length=cycle,
        block_length=1,
        num_parallel_calls=AUTOTUNE,
        deterministic=spec.in_order,
    )


def _read_shard(
    filename: Any,
    size: Any,
    spec: InputSpec,
    counts: Any,
    buffer_size: Optional[int] = None,
    chunk: int = 64,
) -> Any:
    """The records of one shard, parsed and checked: `(jpeg, label, state[,
    boxes, box_count])`.

    Records are handled in chunks of `chunk`: the bytes read are added up (at
    the end of the shard they must equal the file's size, else the shard was
    truncated or corrupt: tf.data logs the reader's error, and the records
    before the damage are kept), then each chunk is parsed and checked at
    once (`_usable`). Per chunk, not per record: the per-record cost of these
    small operations would otherwise rival reading the record.
    """
    records = tf.data.TFRecordDataset(filename, buffer_size=buffer_size)
    # The reader's own warning gives a byte offset without the file; the
    # count below names the shard instead.
    chunks = records.ignore_errors(log_warning=False).batch(chunk)
    chunks = chunks.map(lambda r: (r, False)).concatenate(
        tf.data.Dataset.from_tensors((tf.constant([], tf.string), True))
    )

    def add_bytes(consumed: Any, element: Any) -> Any:
        chunk_records, end = element
        consumed += tf.reduce_sum(tf.cast(tf.strings.length(chunk_records), tf.int64))
        consumed += RECORD_OVERHEAD * tf.cast(tf.size(chunk_records), tf.int64)
        damaged = tf.logical_and(end, consumed != size)
        return consumed, (chunk_records, end, damaged)

    def keep(chunk_records: Any, end: Any, damaged: Any) -> Any:
        if spec.strict:
            tf.debugging.Assert(tf.logical_not(damaged), [_TAG_DAMAGED, filename])
        else:
            counts.count("damaged_shards", damaged, filename)
        return tf.logical_not(end)

    chunks = chunks.scan(tf.constant(0, tf.int64), add_bytes).filter(keep)
    usable = _usable_records(spec, counts)
    return chunks.map(
        lambda chunk_records, end, damaged: usable(chunk_records, filename)
    ).unbatch()


def _usable_records(spec: InputSpec, counts: Any) -> Any:
    """`usable(records, shard)`: a chunk's records parsed and checked,
    `(jpegs, labels, state[, boxes, box_counts])` (boxes where the preset's
    crops use them), the bad ones counted (under `strict`, an assertion
    naming the shard). The give-up marker's image is a small blank stand-in:
    its own bytes are bad, and their decoding error would be ignored."""
    schema = schemas.get(spec.data_format)
    recipe = preprocessing.get_preset(spec.preset, **(spec.preset_overrides or {}))
    with_boxes = spec.training and recipe.use_boxes
    stand_in = tf.io.encode_jpeg(tf.zeros([16, 16, 1], tf.uint8))

    def usable(records: Any, shard: Any) -> Any:
        jpegs, labels, *boxes = schemas.parse_many(records, schema, spec.offset, with_boxes)
        state = _check(jpegs, labels, shard, spec, counts)
        gave_up = tf.reduce_any(state == GIVE_UP)
        jpegs = tf.cond(
            gave_up, lambda: tf.where(state == GIVE_UP, stand_in, jpegs), lambda: jpegs
        )
        # Boxes are carried padded, with their count, where the crop uses
        # them: unbatching ragged ones costs more (and tf.data's unbatch of a
        # tensor with no elements, [n, 0, 4], crashes TensorFlow 2.21).
        return (jpegs, labels, state, *boxes) if with_boxes else (jpegs, labels, state)

    return usable


def _end_marker_in(b: Any) -> Any:
    """Whether bytes `b` (uint8, along the last axis) hold FF D9 anywhere."""
    return tf.reduce_any(
        tf.logical_and(tf.equal(b[..., :-1], 0xFF), tf.equal(b[..., 1:], 0xD9)), -1
    )


def _has_end_marker(data: Any) -> Any:
    """Whether the bytes of the string `data` hold FF D9 anywhere."""
    return _end_marker_in(tf.io.decode_raw(data, tf.uint8))


def _jpegs_are_whole(jpegs: Any) -> Any:
    """For each of `jpegs` (a vector): starts with the start-of-image marker
    and holds an end-of-image marker after it. Most JPEGs end with the
    marker: only those whose last 32 bytes lack it (a trailer, or a cut) are
    searched whole."""
    length = tf.strings.length(jpegs)
    starts = tf.logical_and(length >= 4, tf.equal(tf.strings.substr(jpegs, 0, 2), b"\xff\xd8"))
    after_start = tf.minimum(2, length)
    tails = tf.strings.substr(
        jpegs, tf.maximum(length - 32, after_start), tf.fill(tf.shape(jpegs), 32)
    )
    # (Short ones end in zeros.)
    near_end = _end_marker_in(tf.io.decode_raw(tails, tf.uint8, fixed_length=32))

    def search_the_rest() -> Any:
        rest = tf.where(tf.logical_and(starts, tf.logical_not(near_end)))[:, 0]
        bodies = tf.strings.substr(
            tf.gather(jpegs, rest), tf.gather(after_start, rest), tf.gather(length, rest)
        )
        found = tf.map_fn(_has_end_marker, bodies, fn_output_signature=tf.bool)
        return tf.tensor_scatter_nd_update(near_end, rest[:, None], found)

    lacking = tf.reduce_any(tf.logical_and(starts, tf.logical_not(near_end)))
    return tf.logical_and(starts, tf.cond(lacking, search_the_rest, lambda: near_end))


def shuffle_and_repeat(ds: Any, spec: InputSpec) -> Any:
    """Stage 4: records shuffled and repeated when training (an evaluation
    repeats too, unless it is cached: then the cache repeats)."""
    ds = ds.shuffle(spec.shuffle_buffer, seed=spec.seed) if spec.training else ds
    cached_eval = spec.cache_eval and not spec.training
    return ds.repeat() if spec.repeats and not cached_eval else ds


def keep_usable(ds: Any) -> Any:
    """Stage 5: the usable records (and the give-up marker). Dropped after
    the repetition: a split whose records are all bad still repeats, until
    `_check` gives up after `max_unusable` of them."""
    return ds.filter(lambda jpeg, label, state, *boxes: state != BAD)


def decode(ds: Any, spec: InputSpec, skip: int = 0) -> Any:
    """Stage 6: each record decoded and augmented, `(image, label, state)`; seeded
    pipelines seed each record's crop and flip by its position. A JPEG that
    passed the checks but does not decode is dropped with tf.data's logged
    warning (under `strict`, it ends the pipeline)."""
    one = _record_decoder(spec)
    if spec.seed is None:
        ds = ds.skip(skip) if skip else ds
        ds = ds.map(
            lambda *record: one(None, *record),
            num_parallel_calls=AUTOTUNE,
            deterministic=spec.in_order,
        )
    else:
        ds = ds.enumerate().skip(skip) if skip else ds.enumerate()
        ds = ds.map(
            lambda index, element: one(index, *element),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
    return ds if spec.strict else ds.ignore_errors(log_warning=True)


def _record_decoder(spec: InputSpec) -> Any:
    """`decode(index, jpeg, label, state[, boxes, count]) -> (image, label, state)`
    for `spec`."""
    recipe = preprocessing.get_preset(spec.preset, **(spec.preset_overrides or {}))
    no_boxes = tf.zeros([1, 4], tf.float32)

    def one(
        index: Any, jpeg: Any, label: Any, state: Any, boxes: Any = no_boxes, count: Any = 0
    ) -> Any:
        if not spec.training:
            image = preprocessing.eval_image(
                jpeg, spec.image_size, recipe, spec.channels, spec.dtype
            )
            return image, label, state
        seed = None if index is None else tf.stack([tf.cast(spec.seed, tf.int64), index])
        image = preprocessing.train_image(
            jpeg, boxes[None, :count], spec.image_size, recipe, spec.channels, spec.dtype, seed
        )
        return image, label, state

    return one


def _check(jpegs: Any, labels: Any, shard: Any, spec: InputSpec, counts: Any) -> Any:
    """The state of each of a chunk's records: `BAD`, `USABLE` or, once
    `max_unusable` records were read without a usable one, `GIVE_UP` (the
    pipeline ends at its batch: `batch`). Counted; under `strict`, an
    assertion naming the shard."""
    whole = _jpegs_are_whole(jpegs)
    label_ok = tf.logical_and(labels >= 0, labels < spec.num_classes)
    if spec.strict:
        first_bad = tf.gather(labels, tf.argmin(tf.cast(label_ok, tf.int32)))
        tf.debugging.Assert(tf.reduce_all(whole), [_TAG_IMAGE, shard])
        tf.debugging.Assert(
            tf.reduce_all(label_ok),
            [_TAG_LABEL, first_bad + spec.offset, spec.num_classes, spec.offset, shard],
        )
    ok = tf.logical_and(whole, label_ok)
    bad_images = counts.count("bad_images", tf.logical_not(whole), shard)
    bad_labels = counts.count("bad_labels", tf.logical_and(whole, tf.logical_not(label_ok)), shard)
    usable = counts.usable.assign_add(tf.reduce_sum(tf.cast(ok, tf.int64)))
    give_up = tf.logical_and(usable == 0, bad_images + bad_labels >= spec.max_unusable)
    return tf.where(ok, USABLE, tf.where(give_up, GIVE_UP, BAD))


def batch(ds: Any, spec: InputSpec, batch_size: int) -> Any:
    """Stage 7: (cached evaluation,) batches of one replica, prefetched; a
    batch holding the give-up marker ends the pipeline, saying why."""
    if spec.cache_eval and not spec.training:
        ds = ds.cache().repeat() if spec.repeats else ds.cache()

    def images_and_labels(images: Any, labels: Any, states: Any) -> Any:
        tf.debugging.Assert(
            tf.reduce_all(states != GIVE_UP),
            [_TAG_UNUSABLE, spec.split, spec.max_unusable, labels[-1] + spec.offset],
        )
        return images, labels

    ds = ds.batch(batch_size, drop_remainder=spec.repeats)
    return ds.map(images_and_labels).prefetch(AUTOTUNE)


__all__ = ["InputSpec", "make_dataset", "list_files", "estimate_records"]
