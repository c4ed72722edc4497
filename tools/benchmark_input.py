"""Input-pipeline speed against the machine's bare JPEG-decoding rate.

    python tools/benchmark_input.py --data_dir SHARDS [--image_size 224]
    python tools/benchmark_input.py --synthetic_dir /tmp/photos --image_size 224

Measures, in one process, on the same JPEGs, taking turns (--repeats rounds
of each, the median reported; a shared machine's load drifts):
  1. bare decode: the JPEGs, already in memory, fully decoded by a parallel
     tf.data map (the pipeline's practical ceiling on this machine);
  2. the training pipeline of tf_lars.data.make_dataset, from the shards
     (read, parse, random crop with the fused decode, resize, flip,
     normalize, batch);
  3. the per-image work of the preset alone (crop-decode, resize, flip;
     uint8), on the JPEGs in memory: the share of the ceiling left once the
     image work is paid for, before reading and parsing the shards.
Prints images per second, per core, and the ratios to the bare decode;
then where the time goes: the CPU time a record costs in the reading
stages, each alone at full speed, beside the per-image work's.
With --previous=REV, also the training pipeline (uint8) of tf_lars.data as
it was at git revision REV, taking turns with today's: the two side by side.
With --data_service, also:
  4. the uint8 training pipeline run by a tf.data service worker (another
     process on this machine) and read over gRPC, against 2.; and the bytes
     a batch carries per image (before the service's compression).
--synthetic_dir writes ImageNet-sized synthetic photos (smooth, 500x375)
there first, for machines without ImageNet.

The shuffle buffer refills at the start of every pass over the shards, and
a small set is passed over far more often than ImageNet (2,000 images: every
second or so, ImageNet: every few minutes). So that this refill weighs what
it weighs on ImageNet, a set smaller than --max_images gets a buffer of the
same fraction of the set as the trainer's 10,000 of ImageNet's 1,281,167
(at least 16); pass --shuffle_buffer to choose.
"""

import functools
import io
import os
import statistics
import sys
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from tf_lars.data import pipeline, preprocessing, schema, writer

FLAGS = flags.FLAGS
IMAGENET_IMAGES = 1_281_167  # ImageNet's training set
IMAGENET_BUFFER = 10_000  # the trainer's shuffle buffer (--shuffle_buffer)
flags.DEFINE_string("data_dir", None, "Folder of training shards.")
flags.DEFINE_string("synthetic_dir", None, "Write synthetic photo shards here and use them.")
flags.DEFINE_integer("synthetic_images", 2000, "Images in the synthetic shards.")
flags.DEFINE_float("synthetic_grain", 20.0, "Noise of the synthetic photos (sets their size).")
flags.DEFINE_enum("data_format", "imagenet", list(schema.SCHEMAS), "Shard schema.")
flags.DEFINE_string("preset", "tpu", "Preprocessing preset.")
flags.DEFINE_integer("image_size", 224, "Output image size.")
flags.DEFINE_integer("channels", 3, "Channels to decode.")
flags.DEFINE_integer("num_classes", 1000, "Labels must be below this.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer(
    "shuffle_buffer",
    None,
    "Records in the pipeline's shuffle buffer (default: "
    "the trainer's 10,000 for sets of --max_images or more, else scaled to "
    "the set's size as 10,000 is to ImageNet's 1,281,167 images).",
)
flags.DEFINE_integer("max_images", 4000, "JPEGs held in memory for the bare decode.")
flags.DEFINE_float("seconds", 10.0, "Time each measurement for about this long.")
flags.DEFINE_integer("repeats", 3, "Rounds of measurements (medians are reported).")
flags.DEFINE_string(
    "previous",
    None,
    "A git revision (e.g. HEAD~3): also time the uint8 training pipeline of "
    "tf_lars/data as it was there, taking turns with today's.",
)
flags.DEFINE_boolean(
    "data_service",
    False,
    "Also time the uint8 training pipeline through a tf.data service: a "
    "dispatcher in this process and one worker in another (tools/data_service.py) "
    "on this machine, against the same pipeline in this process.",
)


def synthetic_photo(index, grain=20.0):
    """A 375x500 RGB JPEG of about ImageNet's mean file size (~110 KB).

    Upsampled noise (smooth regions) plus fine grain (texture), so that its
    decoding costs about what an ImageNet photo's does.
    """
    rng = np.random.default_rng(index)
    coarse = rng.uniform(0, 255, size=(24, 32, 3)).astype(np.float32)
    image = tf.image.resize(coarse[None], [375, 500], method="bicubic")[0]
    image = tf.clip_by_value(image + rng.normal(0, grain, size=(375, 500, 3)), 0, 255)
    jpeg = tf.io.encode_jpeg(tf.cast(image, tf.uint8), quality=90).numpy()
    return schema.imagenet_example(jpeg, 1 + index % 1000, 375, 500)


def rate(iterator, images_per_step, seconds):
    """Images per second over about `seconds`, after two warm-up steps, and
    the share of the machine's cores busy in this process meanwhile."""
    for _ in range(2):
        next(iterator)
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        next(iterator)
        count += images_per_step
    wall = time.perf_counter() - start
    return count / wall, (time.process_time() - cpu) / wall / (os.cpu_count() or 1)


def cpu_per_element(ds, seconds):
    """CPU microseconds (all of this process's threads) per element of `ds`,
    batched by 128, over about `seconds` at full speed."""
    iterator = iter(ds.batch(128))
    for _ in range(2):
        next(iterator)
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        next(iterator)
        count += 128
    return 1e6 * (time.process_time() - cpu) / count


def where_the_time_goes(files, spec, work, seconds):
    """CPU microseconds a record costs in the reading stages, each measured
    alone at full speed, beside the per-image work's and the pipeline's."""
    from tf_lars.data.counts import BadRecords

    context = tf.distribute.InputContext()
    counts = BadRecords().split(spec.split)

    def read():
        shards = pipeline.shard_files(files, spec, context).repeat()
        return pipeline.read_records(shards, spec, counts, min(16, len(files)), False)

    stages = {
        "reading the records (TFRecordDataset alone)": tf.data.TFRecordDataset(files).repeat(),
        "+ parsed and checked by chunks, interleaved (stage 3)": read(),
        "+ shuffled, the usable kept (stages 4-5)": pipeline.keep_usable(
            pipeline.shuffle_and_repeat(read(), spec)
        ),
        "the per-image work alone (in memory)": work.unbatch(),
        "the whole pipeline (uint8)": pipeline.make_dataset(spec, 128).unbatch(),
    }
    print("\nWhere the time goes: CPU microseconds an image or record costs (all threads)")
    print("| stage | CPU us |")
    print("|---|---|")
    for name, ds in stages.items():
        print(f"| {name} | {cpu_per_element(ds, seconds):.0f} |")


def main(argv):
    del argv
    try:
        measure()
    except (FileNotFoundError, ValueError) as e:  # bad folder, shards or preset
        sys.exit(f"benchmark_input: error: {e}")


def measure():
    recipe = preprocessing.get_preset(FLAGS.preset)  # an unknown preset fails first
    data_dir = FLAGS.data_dir
    if FLAGS.synthetic_dir:
        _, failures, _ = writer.build_shards(
            FLAGS.synthetic_dir,
            "train",
            list(range(FLAGS.synthetic_images)),
            8,
            functools.partial(synthetic_photo, grain=FLAGS.synthetic_grain),
            processes=os.cpu_count() or 1,
        )
        if failures:
            raise app.UsageError(f"synthetic photos failed: {failures[0]}")
        data_dir = FLAGS.synthetic_dir
    if not data_dir:
        raise app.UsageError("pass --data_dir (shards) or --synthetic_dir")
    files = pipeline.list_files(data_dir, "train", FLAGS.data_format)
    fmt = schema.get(FLAGS.data_format)
    jpegs = (
        tf.data.TFRecordDataset(files)
        .take(FLAGS.max_images)
        .map(lambda r: schema.parse(r, fmt)[0])
    )
    jpegs = list(jpegs.as_numpy_iterator())
    if not jpegs:
        raise app.UsageError(f"no records in the train shards of {data_dir}")
    jpegs = tf.constant(jpegs)
    shuffle_buffer = FLAGS.shuffle_buffer
    if shuffle_buffer is None:
        shuffle_buffer = (
            IMAGENET_BUFFER
            if len(jpegs) >= FLAGS.max_images
            else max(16, round(len(jpegs) * IMAGENET_BUFFER / IMAGENET_IMAGES))
        )
    cores = os.cpu_count() or 1

    def in_memory(fn):
        """`fn` on each of the JPEGs in memory, by a parallel map, batched."""
        return (
            tf.data.Dataset.from_tensor_slices(jpegs)
            .repeat()
            .map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
            .batch(FLAGS.batch_size)
            .prefetch(tf.data.AUTOTUNE)
        )

    bare = in_memory(lambda j: tf.shape(tf.io.decode_jpeg(j, channels=FLAGS.channels)))

    # The per-image work alone (uint8), on the JPEGs in memory: what is left
    # of the ceiling once crop, resize and flip are paid for, before reading.
    no_boxes = tf.zeros([1, 0, 4], tf.float32)
    work = in_memory(
        lambda j: preprocessing.train_image(
            j, no_boxes, FLAGS.image_size, recipe, FLAGS.channels, tf.uint8
        )
    )

    def train_spec(dtype, module=pipeline):
        return module.InputSpec(
            data_dir,
            "train",
            training=True,
            image_size=FLAGS.image_size,
            data_format=FLAGS.data_format,
            preset=FLAGS.preset,
            channels=FLAGS.channels,
            dtype=dtype,
            num_classes=FLAGS.num_classes,
            shuffle_buffer=shuffle_buffer,
        )

    def train(dtype, module=pipeline):
        return module.make_dataset(train_spec(dtype, module), FLAGS.batch_size)

    # One pipeline runs at a time: each measurement has its own iterator.
    makers = {
        "bare": lambda: bare,
        "work": lambda: work,
        "float32": lambda: train("float32"),
        "uint8": lambda: train("uint8"),
    }
    if FLAGS.previous:
        before = pipeline_at(FLAGS.previous)
        makers["previous"] = lambda: train("uint8", before)
    if FLAGS.data_service:
        makers["service"] = through_service(lambda: train("uint8"))
    rounds = {name: [] for name in makers}
    busy = {}  # (the last round's)
    for _ in range(FLAGS.repeats):
        for name, make in makers.items():
            images_per_second, busy[name] = rate(iter(make()), FLAGS.batch_size, FLAGS.seconds)
            rounds[name].append(images_per_second)
    service_rate = statistics.median(rounds.pop("service")) if FLAGS.data_service else None
    previous_rate = statistics.median(rounds.pop("previous")) if FLAGS.previous else None
    bare_rate = statistics.median(rounds.pop("bare"))
    work_rate = statistics.median(rounds.pop("work"))
    train_rates = {dtype: statistics.median(values) for dtype, values in rounds.items()}

    height, width = tf.io.extract_jpeg_shape(jpegs[0]).numpy()[:2]
    kilobytes = float(tf.reduce_mean(tf.strings.length(jpegs))) / 1e3
    print(
        f"shards: {data_dir} ({len(files)} files, first image {height}x{width}, "
        f"mean JPEG {kilobytes:.0f} KB); "
        f"{cores} cores; preset {FLAGS.preset}, {FLAGS.image_size} px, "
        f"batch {FLAGS.batch_size}, shuffle buffer {shuffle_buffer}; medians of "
        f"{FLAGS.repeats} rounds of {FLAGS.seconds:g} s"
    )
    print("| measurement | images/s | images/s per core |")
    print("|---|---|---|")
    print(f"| bare JPEG decode (in memory) | {bare_rate:.0f} | {bare_rate / cores:.0f} |")
    print(
        f"| crop-decode, resize, flip alone (uint8, in memory, no boxes) | {work_rate:.0f} "
        f"| {work_rate / cores:.0f} |"
    )
    what = {
        "float32": "float32, normalized on the host",
        "uint8": "uint8, normalized in the model",
    }
    for dtype, value in train_rates.items():
        print(f"| training pipeline ({what[dtype]}) | {value:.0f} | {value / cores:.0f} |")
    for dtype, value in train_rates.items():
        print(f"ratio pipeline ({dtype}) / bare decode: {value / bare_rate:.3f}")
    print(f"ratio per-image work alone / bare decode: {work_rate / bare_rate:.3f}")
    print(f"ratio pipeline (uint8) / per-image work alone: {train_rates['uint8'] / work_rate:.3f}")
    if previous_rate is not None:
        print(
            f"| training pipeline at {FLAGS.previous} (uint8) | {previous_rate:.0f} "
            f"| {previous_rate / cores:.0f} |"
        )
        print(
            f"ratio pipeline at {FLAGS.previous} (uint8) / per-image work alone: "
            f"{previous_rate / work_rate:.3f}"
        )
    if service_rate is not None:
        per_image = FLAGS.image_size**2 * FLAGS.channels + 4  # uint8 pixels, an int32 label
        print(
            f"| training pipeline through the tf.data service (uint8, one local worker) "
            f"| {service_rate:.0f} | {service_rate / cores:.0f} |"
        )
        print(
            f"ratio service / in-process pipeline (uint8): "
            f"{service_rate / train_rates['uint8']:.3f}"
        )
        print(f"bytes per image through the service: {per_image:,} (before compression)")
    print(
        "cores busy (the last round): "
        + ", ".join(f"{name} {share:.0%}" for name, share in busy.items())
    )
    where_the_time_goes(files, train_spec("uint8"), work, FLAGS.seconds)


def pipeline_at(revision):
    """`tf_lars.data.pipeline` as it was at git `revision`, imported as
    `tf_lars_at_revision.data.pipeline` beside today's."""
    import importlib
    import subprocess
    import tarfile
    import tempfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        archive = subprocess.run(
            ["git", "archive", revision, "tf_lars/data"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
    except subprocess.CalledProcessError as e:
        error = e.stderr.decode().strip()
        raise ValueError(f"--previous={revision}: git archive failed: {error}") from None
    folder = tempfile.mkdtemp(prefix="tf_lars_at_revision_")
    package = os.path.join(folder, "tf_lars_at_revision")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder)
    os.rename(os.path.join(folder, "tf_lars"), package)
    open(os.path.join(package, "__init__.py"), "w").close()
    for name in os.listdir(os.path.join(package, "data")):
        if name.endswith(".py"):
            path = os.path.join(package, "data", name)
            with open(path) as f:
                text = f.read().replace("tf_lars.data", "tf_lars_at_revision.data")
            with open(path, "w") as f:
                f.write(text)
    sys.path.insert(0, folder)
    return importlib.import_module("tf_lars_at_revision.data.pipeline")


def through_service(make):
    """A maker of `make()`'s pipeline run by a tf.data service worker in
    another process (each call a new job: a measurement starts afresh)."""
    import subprocess

    from tf_lars.data import service

    dispatcher = tf.data.experimental.service.DispatchServer()
    address = dispatcher.target.split("://")[1]
    tool = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data_service.py")
    worker = subprocess.Popen(
        [sys.executable, tool, "worker", f"--dispatcher={address}", "--host=127.0.0.1"]
    )
    import atexit

    atexit.register(worker.kill)
    jobs = iter(range(1 << 30))

    def maker(server=dispatcher):  # (holds the dispatcher: it stops when collected)
        return service.distribute(make(), address, f"benchmark-{next(jobs)}")

    return maker


if __name__ == "__main__":
    app.run(main)
