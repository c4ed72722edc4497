"""The trainer's data: per-format defaults, shard pipelines and synthetic data.

TensorFlow is imported only where `tf.data` is used: the JAX engine on
synthetic data runs without it (`SyntheticBatches`).
"""

import dataclasses
import sys
from typing import Any, Optional

import keras
import numpy as np

from tf_lars.data import presets
from tf_lars.data.presets import per_channel

# Sizes and shapes of each data format, used where a flag is left unset.
FORMAT_DEFAULTS: dict[str, dict[str, Any]] = {
    "imagenet": dict(
        image_size=224,
        channels=3,
        num_classes=1000,
        preset="tpu",
        train_examples=1_281_167,
        eval_examples=50_000,
    ),
    "tfds": dict(
        image_size=224,
        channels=3,
        num_classes=1000,
        preset="tpu",
        train_examples=1_281_167,
        eval_examples=50_000,
    ),
    "fashion_mnist": dict(
        image_size=28,
        channels=1,
        num_classes=10,
        preset="small",
        train_examples=60_000,
        eval_examples=10_000,
    ),
    "synthetic": dict(
        image_size=224,
        channels=3,
        num_classes=1000,
        preset="tpu",
        train_examples=1_281_167,
        eval_examples=50_000,
    ),
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
    label_offset: Optional[int] = None
    strict: bool = False
    cache_eval: bool = False
    shuffle_buffer: int = 10_000
    seed: Optional[int] = None

    @property
    def schema(self):  # Fashion-MNIST shards are written in the ImageNet schema.
        return "tfds" if self.data_format == "tfds" else "imagenet"

    @property
    def norm(self):
        """Mean and std the model applies to the uint8 pixels it receives."""
        recipe = presets.get_preset(self.preset)
        return recipe.mean, recipe.std


def spec(data_format, data_dir=None, eval_split="validation", **given):
    """A `DataSpec`: the values given, else the format's defaults.

    For TFDS shards, `data_dir` may be the TFDS root or the data set's folder
    (the newest version is read), and the split sizes in its
    `dataset_info.json` replace the format's defaults.
    """
    values: dict[str, Any] = dict(FORMAT_DEFAULTS[data_format])
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
            "or set --channels to the preset's"
        ) from None
    return data


def spec_of(cfg: Any) -> DataSpec:
    """The `DataSpec` of a `TrainConfig`."""
    return spec(
        cfg.data_format,
        cfg.data_dir,
        image_size=cfg.image_size,
        channels=cfg.channels,
        num_classes=cfg.num_classes,
        preset=cfg.preset,
        train_examples=cfg.train_examples,
        eval_examples=cfg.eval_examples,
        label_offset=cfg.label_offset,
        strict=cfg.strict_data,
        eval_split=cfg.eval_split,
        cache_eval=cfg.cache_eval,
        shuffle_buffer=cfg.shuffle_buffer,
        seed=cfg.seed,
    )


def check_splits(data: DataSpec, cfg: Any) -> None:
    """Missing shards fail now, not mid-run; a split whose shards hold far
    more or fewer records than its size says gets a warning."""
    if data.data_format == "synthetic":
        return
    from tf_lars.data import pipeline

    splits = ["train", cfg.eval_split] + ([cfg.test_split] if cfg.test_split else [])
    for split in splits:
        files = pipeline.list_files(data.data_dir, split, data.schema)
        if data.data_format != "tfds" and split in ("train", cfg.eval_split):
            _check_size(split, files, data, cfg)


def _check_size(split: str, files: list[str], data: DataSpec, cfg: Any) -> None:
    """Warns when the size of `split` is far from its shards' (estimated)."""
    from tf_lars.data import pipeline

    flag = "train_examples" if split == "train" else "eval_examples"
    given = getattr(data, flag)
    estimate = pipeline.estimate_records(files)
    if estimate and not estimate / 1.5 <= given <= estimate * 1.5:
        source = "" if getattr(cfg, flag) is not None else f" (the {data.data_format} default)"
        print(
            f"tf-lars-train: warning: --{flag}={given}{source}, but the {split} shards hold "
            f"about {estimate:,} records (estimated from their size): pass --{flag} with "
            "the split's size, or an epoch and the schedule will not mean what they say",
            file=sys.stderr,
            flush=True,
        )


def _one_hot(num_classes):
    import tensorflow as tf

    def convert(images, labels):
        return images, tf.one_hot(labels, num_classes)

    return convert


def synthetic(data, context, global_batch_size, skip_steps=0):
    """A fixed stream of global batches of random uint8 images.

    Example `i` of the stream is a function of `i` alone, and each replica
    takes its slice of every global batch, so any topology (devices,
    workers) sees the same global batches: runs can be compared exactly.
    """
    import tensorflow as tf

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
        lambda b: tf.data.Dataset.range(per_replica).map(lambda k: example(b, k))
    )
    return ds.batch(per_replica, drop_remainder=True)


def dataset_fn(
    data,
    global_batch_size,
    training,
    bad_records=None,
    split=None,
    autotune=True,
    skip_steps=0,
    service=None,
):
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

    `service`: `(address, run folder)` of a tf.data service that decodes the
    training shards instead (`tf_lars.data.service`); every consumer joins
    the run's job and the service splits the shards between its workers.
    """
    import tensorflow as tf

    from tf_lars.data import pipeline

    split = split or ("train" if training else "validation")
    options = tf.data.Options()
    options.autotune.enabled = autotune

    def make(context):
        if data.data_format == "synthetic":
            ds = synthetic(data, context, global_batch_size, skip_steps)
        else:
            seeded = data.seed is not None and training
            skip = skip_steps * global_batch_size // context.num_input_pipelines if seeded else 0
            spec = pipeline.InputSpec(
                data.data_dir,
                split,
                training=training,
                image_size=data.image_size,
                data_format=data.schema,
                preset=data.preset,
                channels=data.channels,
                dtype=tf.uint8,
                num_classes=data.num_classes,
                label_offset=data.label_offset,
                shuffle_buffer=data.shuffle_buffer,
                seed=data.seed,
                strict=data.strict,
                cache_eval=data.cache_eval,
                repeat=True,
            )
            if service and training:
                ds = _through_service(spec, global_batch_size, context, service, skip_steps)
            else:
                ds = pipeline.make_dataset(spec, global_batch_size, context, bad_records, skip)
        ds = ds.map(_one_hot(data.num_classes)).prefetch(tf.data.AUTOTUNE)
        return ds.with_options(options)

    return make


def _through_service(spec, global_batch_size, context, service, skip_steps):
    """The training pipeline run by the tf.data service: all shards (the
    service splits them), this consumer's replicas' batches."""
    import tensorflow as tf

    from tf_lars.data import pipeline
    from tf_lars.data import service as data_service

    address, run_folder = service
    whole = tf.distribute.InputContext(1, 0, context.num_replicas_in_sync)
    ds = pipeline.make_dataset(spec, global_batch_size, whole)
    return data_service.distribute(ds, address, data_service.job_name(run_folder, skip_steps))


class SyntheticBatches(keras.utils.PyDataset):
    """The synthetic stream without TensorFlow, for the JAX engine: this
    process's rows of global batches `skip_steps .. skip_steps + steps - 1`,
    as numpy arrays.

    Example `i` is drawn from a generator seeded with `(seed, i % 4096)`
    and labelled `i % num_classes`; process `p` of `n` takes rows
    `p*b/n .. (p+1)*b/n` of each global batch of `b`, so any number of
    processes and devices sees the same global batches.

    Item `k` is always the same batch: nothing depends on what was read
    before. (Keras reads a first batch to build the model and then starts
    the pass again, so a stream that advanced with its reads would skip a
    batch at every `fit`.) Training therefore reads one pass over all the
    run's remaining steps, with `fit`'s `steps_per_epoch` cutting it into
    epochs, as it does a repeated tf.data stream; evaluations read their
    `steps` batches from the start every time.
    """

    def __init__(
        self, data, global_batch_size, steps, process_id=0, num_processes=1, skip_steps=0
    ):
        super().__init__()
        if global_batch_size % num_processes:
            raise ValueError(
                f"--batch_size={global_batch_size} does not divide among {num_processes} processes"
            )
        self.per_process = global_batch_size // num_processes
        self.first = process_id * self.per_process
        self.global_batch, self.steps, self.offset = global_batch_size, steps, skip_steps
        self.shape = (data.image_size, data.image_size, data.channels)
        self.seed = data.seed or 0
        self.one_hot = np.eye(data.num_classes, dtype="float32")

    def __len__(self):
        return self.steps

    def __getitem__(self, index):
        if not 0 <= index < self.steps:
            raise IndexError(f"batch {index} of a stream of {self.steps}")
        start = (self.offset + index) * self.global_batch + self.first
        rows = np.arange(start, start + self.per_process)
        images = np.stack(
            [
                np.random.default_rng([self.seed, i % 4096]).integers(
                    0, 256, self.shape, dtype=np.uint8
                )
                for i in rows
            ]
        )
        return images, self.one_hot[rows % len(self.one_hot)]
