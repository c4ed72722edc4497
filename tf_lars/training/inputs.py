"""The trainer's data: per-format defaults, shard pipelines and synthetic data."""

import dataclasses

import tensorflow as tf

from tf_lars.data import pipeline, preprocessing
from tf_lars.models.layers import per_channel

# Sizes and shapes of each data format, used where a flag is left unset.
FORMAT_DEFAULTS = {
    "imagenet": dict(image_size=224, channels=3, num_classes=1000, preset="tpu",
                     train_examples=1_281_167, eval_examples=50_000),
    "tfds": dict(image_size=224, channels=3, num_classes=1000, preset="tpu",
                 train_examples=1_281_167, eval_examples=50_000),
    "fashion_mnist": dict(image_size=28, channels=1, num_classes=10, preset="small",
                          train_examples=60_000, eval_examples=10_000),
    "synthetic": dict(image_size=224, channels=3, num_classes=1000, preset="tpu",
                      train_examples=1_281_167, eval_examples=50_000),
}


@dataclasses.dataclass
class DataSpec:
    data_format: str
    data_dir: str
    image_size: int
    channels: int
    num_classes: int
    preset: str
    train_examples: int
    eval_examples: int
    label_offset: int = None
    strict: bool = False
    cache_eval: bool = False
    shuffle_buffer: int = 10_000
    seed: int = None

    @property
    def schema(self):  # Fashion-MNIST shards are written in the ImageNet schema.
        return "tfds" if self.data_format == "tfds" else "imagenet"

    @property
    def norm(self):
        """Mean and std the model applies to the uint8 pixels it receives."""
        recipe = preprocessing.get_preset(self.preset)
        return recipe.mean, recipe.std


def spec(data_format, data_dir=None, eval_split="validation", **given):
    """A `DataSpec`: the values given, else the format's defaults.

    For TFDS shards, `data_dir` may be the TFDS root or the data set's folder
    (the newest version is read), and the split sizes in its
    `dataset_info.json` replace the format's defaults.
    """
    values = dict(FORMAT_DEFAULTS[data_format])
    if data_format != "synthetic" and not data_dir:
        raise ValueError(f"--data_dir is needed for --data_format={data_format}")
    if data_format == "tfds":
        from absl import logging

        from tf_lars.data import tfds

        data_dir, sizes, note = tfds.resolve(data_dir)
        if note:
            logging.warning(note)
        for key, split in (("train_examples", "train"), ("eval_examples", eval_split)):
            values[key] = sizes.get(split, values[key])
    values.update({k: v for k, v in given.items() if v is not None})
    data = DataSpec(data_format=data_format, data_dir=data_dir, **values)
    try:
        for stat, what in zip(data.norm, ("mean", "std")):
            per_channel(stat, data.channels, what)
    except ValueError:
        raise ValueError(
            f"--preset={data.preset} normalizes {len(data.norm[0])} channels, not "
            f"--channels={data.channels}: use --preset=small for 1-channel images, "
            "or set --channels to the preset's") from None
    return data


def _one_hot(num_classes):
    def convert(images, labels):
        return images, tf.one_hot(labels, num_classes)
    return convert


def synthetic(data, context, global_batch_size, skip_steps=0):
    """A fixed stream of global batches of random uint8 images.

    Example `i` of the stream is a function of `i` alone, and each replica
    takes its slice of every global batch, so any topology (devices,
    workers) sees the same global batches: runs can be compared exactly.
    """
    per_replica = context.get_per_replica_batch_size(global_batch_size)
    replicas_here = context.num_replicas_in_sync // context.num_input_pipelines
    first = context.input_pipeline_id * replicas_here
    seed = data.seed or 0
    shape = [data.image_size, data.image_size, data.channels]

    def example(batch_index, offset):
        step, local = batch_index // replicas_here, batch_index % replicas_here
        i = (step * context.num_replicas_in_sync + first + local) * per_replica + offset
        pixels = tf.random.stateless_uniform(shape, [seed, i % 4096], 0, 256, tf.int32)
        return tf.cast(pixels, tf.uint8), tf.cast(i % data.num_classes, tf.int32)

    ds = tf.data.Dataset.range(skip_steps * replicas_here, tf.int64.max).flat_map(
        lambda b: tf.data.Dataset.range(per_replica).map(lambda k: example(b, k)))
    return ds.batch(per_replica, drop_remainder=True)


def dataset_fn(data, global_batch_size, training, bad_records=None, split=None,
               autotune=True, skip_steps=0):
    """A function of `tf.distribute.InputContext`, for
    `strategy.distribute_datasets_from_function`, yielding uint8 images
    (normalized inside the model) and one-hot labels from `split` (default:
    train, or validation when not training).

    `autotune=False` turns tf.data's autotuning off, for pipelines that Keras
    iterates afresh at every evaluation: deleting an autotuned iterator waits
    for its autotuning thread to wake (seen: 2 to 5 s, every core idle, in
    about 40% of deletions), and each `evaluate` or `predict` call deletes
    one. Without it, maps still run one call per core.

    `skip_steps`: global batches already trained (a resumed run). A seeded
    stream (synthetic data, or shards with a seed) starts after them, as an
    uninterrupted run would go on; an unseeded one is random anyway and
    starts afresh.
    """
    split = split or ("train" if training else "validation")
    options = tf.data.Options()
    options.autotune.enabled = autotune

    def make(context):
        if data.data_format == "synthetic":
            ds = synthetic(data, context, global_batch_size, skip_steps)
        else:
            seeded = data.seed is not None and training
            skip = skip_steps * global_batch_size // context.num_input_pipelines if seeded else 0
            ds = pipeline.make_dataset(
                data.data_dir, split, training=training,
                global_batch_size=global_batch_size, image_size=data.image_size,
                data_format=data.schema, preset=data.preset, channels=data.channels,
                dtype=tf.uint8, num_classes=data.num_classes, label_offset=data.label_offset,
                input_context=context, shuffle_buffer=data.shuffle_buffer, seed=data.seed,
                strict=data.strict, bad_records=bad_records, cache_eval=data.cache_eval,
                repeat=True, skip=skip)
        ds = ds.map(_one_hot(data.num_classes)).prefetch(tf.data.AUTOTUNE)
        return ds.with_options(options)
    return make
