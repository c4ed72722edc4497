"""Input pipelines on real JPEG records that the tests write themselves."""

import os

import keras
import numpy as np
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("tf.data pipelines need TensorFlow", allow_module_level=True)

import helpers  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_lars.data import pipeline, preprocessing  # noqa: E402

HEIGHT, WIDTH = 48, 64


def jpeg(seed, height=HEIGHT, width=WIDTH):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return tf.io.encode_jpeg(pixels, quality=90).numpy()


def example(image, label, boxes=(), fmt="imagenet"):
    """A tf.train.Example written by hand, key by key."""
    b = lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=v))  # noqa: E731
    i = lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=v))  # noqa: E731
    f = lambda v: tf.train.Feature(float_list=tf.train.FloatList(value=v))  # noqa: E731
    if fmt == "tfds":
        feature = {"image": b([image]), "label": i([label]), "file_name": b([b"x.JPEG"])}
    else:
        feature = {
            "image/encoded": b([image]),
            "image/class/label": i([label]),
            "image/format": b([b"JPEG"]),
            "image/filename": b([b"x.JPEG"]),
        }
        for k, key in enumerate(("ymin", "xmin", "ymax", "xmax")):
            feature[f"image/object/bbox/{key}"] = f([box[k] for box in boxes])
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_shards(
    folder,
    split="train",
    shards=4,
    per_shard=6,
    fmt="imagenet",
    label_of=lambda shard, k: shard + 1,
):
    """Shard s holds `per_shard` images labelled `label_of(s, k)` (stored)."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for s in range(shards):
        name = (
            f"imagenet2012-{split}.tfrecord-{s:05d}-of-{shards:05d}"
            if fmt == "tfds"
            else f"{split}-{s:05d}-of-{shards:05d}"
        )
        path = os.path.join(folder, name)
        with tf.io.TFRecordWriter(path) as w:
            for k in range(per_shard):
                w.write(example(jpeg(100 * s + k), label_of(s, k), fmt=fmt))
        paths.append(path)
    return paths


def read_all(ds):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(images), np.concatenate(labels)


COMMON = dict(image_size=32, num_classes=10)


def test_training_batches_shapes_dtypes_range_and_labels(tmp_path):
    write_shards(tmp_path)
    for dtype in (tf.float32, tf.bfloat16):
        ds = helpers.dataset(
            str(tmp_path), "train", training=True, global_batch_size=8, dtype=dtype, **COMMON
        )
        images, labels = next(iter(ds))
        assert images.shape == (8, 32, 32, 3) and images.dtype == dtype
        assert labels.dtype == tf.int32
        values = tf.cast(images, tf.float32).numpy()
        # Mean/std normalized uint8 pixels lie within these bounds.
        lo = (0 - max(preprocessing.IMAGENET_MEAN)) / min(preprocessing.IMAGENET_STD)
        hi = (255 - min(preprocessing.IMAGENET_MEAN)) / min(preprocessing.IMAGENET_STD)
        assert lo - 0.05 <= values.min() < 0 < values.max() <= hi + 0.05
        assert set(labels.numpy()) <= {0, 1, 2, 3}  # stored 1..4, offset 1


def test_the_records_boxes_guide_the_pipelines_crops(tmp_path):
    # Black images, white in the top-left 16 x 16 of 64 x 64 (1/16), the
    # record's box around it. A crop of 6-25% of the image that covers half
    # of the box is at least 1/8 white; without a box no such crop covers
    # half of the image, and the whole image (1/16 white) is kept.
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[:16, :16] = 255
    white = tf.io.encode_jpeg(pixels, quality=100).numpy()
    with tf.io.TFRecordWriter(str(tmp_path / "train-00000-of-00001")) as w:
        for k in range(8):
            w.write(example(white, 1 + k % 4, boxes=[(0.0, 0.0, 0.25, 0.25)]))
            w.write(example(white, 1 + k % 4))  # (a record without boxes between)
    overrides = dict(area_range=(0.06, 0.25), min_object_covered=0.5)
    ds = helpers.dataset(
        str(tmp_path),
        "train",
        training=True,
        global_batch_size=16,
        dtype=tf.uint8,
        preset="legacy",
        preset_overrides=overrides,
        seed=1,
        shuffle_buffer=1,
        **COMMON,
    )
    images, _ = next(iter(ds))
    means = images.numpy().reshape(16, -1).mean(1)
    assert (means[0::2] > 255 / 8 - 1).all(), means  # the boxed records
    assert (means[1::2] < 255 / 16 + 1).all(), means  # the others


def test_label_offset_zero_keeps_stored_labels(tmp_path):
    write_shards(tmp_path, split="validation")
    _, labels = read_all(
        helpers.dataset(
            str(tmp_path),
            "validation",
            training=False,
            global_batch_size=5,
            label_offset=0,
            **COMMON,
        )
    )
    assert sorted(set(labels)) == [1, 2, 3, 4] and len(labels) == 24


def test_tfds_shards_are_read_with_zero_based_labels(tmp_path):
    write_shards(tmp_path, split="validation", fmt="tfds", label_of=lambda s, k: s)
    _, labels = read_all(
        helpers.dataset(
            str(tmp_path),
            "validation",
            training=False,
            global_batch_size=6,
            data_format="tfds",
            **COMMON,
        )
    )
    assert sorted(labels) == sorted([s for s in range(4) for _ in range(6)])


def test_evaluation_is_deterministic_and_complete(tmp_path):
    write_shards(tmp_path, split="validation", shards=3, per_shard=5)
    make = lambda: helpers.dataset(  # noqa: E731
        str(tmp_path), "validation", training=False, global_batch_size=4, preset="legacy", **COMMON
    )
    first, second = read_all(make()), read_all(make())
    np.testing.assert_array_equal(first[0], second[0])
    assert len(first[1]) == 15  # the last, partial batch is kept in evaluation


def test_seeded_training_pipeline_is_repeatable(tmp_path):
    write_shards(tmp_path)
    make = lambda: helpers.dataset(  # noqa: E731
        str(tmp_path), "train", training=True, global_batch_size=8, seed=7, **COMMON
    )
    a = [x.numpy() for x, _ in make().take(3)]
    b = [x.numpy() for x, _ in make().take(3)]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))


def test_workers_read_disjoint_files_that_cover_all(tmp_path):
    write_shards(tmp_path, split="validation", shards=4)
    seen = []
    for worker in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=worker, num_replicas_in_sync=2
        )
        _, labels = read_all(
            helpers.dataset(
                str(tmp_path),
                "validation",
                training=False,
                global_batch_size=4,
                input_context=context,
                label_offset=0,
                **COMMON,
            )
        )
        seen.append(set(labels))  # shard s holds label s + 1 only
    assert not seen[0] & seen[1] and seen[0] | seen[1] == {1, 2, 3, 4}


def test_per_replica_batch_size(tmp_path):
    write_shards(tmp_path)
    context = tf.distribute.InputContext(
        num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=4
    )
    images, _ = next(
        iter(
            helpers.dataset(
                str(tmp_path),
                "train",
                training=True,
                global_batch_size=16,
                input_context=context,
                **COMMON,
            )
        )
    )
    assert images.shape[0] == 4


def write_damaged(folder):
    """Shard 0: 2 good, 1 half JPEG, 1 non-JPEG, 1 label 11; shard 1 truncated."""
    os.makedirs(folder, exist_ok=True)
    good = jpeg(1)
    with tf.io.TFRecordWriter(os.path.join(folder, "train-00000-of-00002")) as w:
        for record in (
            example(good, 1),
            example(good[: len(good) // 2], 2),
            example(b"not a jpeg at all" * 4, 3),
            example(good, 11),
            example(good, 2),
        ):
            w.write(record)
    truncated = os.path.join(folder, "train-00001-of-00002")
    with tf.io.TFRecordWriter(truncated) as w:
        for k in range(3):
            w.write(example(jpeg(10 + k), 5))
    with open(truncated, "rb+") as f:
        f.truncate(os.path.getsize(truncated) - 40)
    return truncated


def test_bad_records_are_skipped_and_counted(tmp_path):
    write_damaged(str(tmp_path))
    bad = pipeline.BadRecords()
    _, labels = read_all(
        helpers.dataset(
            str(tmp_path), "train", training=False, global_batch_size=2, bad_records=bad, **COMMON
        )
    )
    # 2 good records of shard 0, and the 2 whole records before the damage.
    assert sorted(labels) == [0, 1, 4, 4]
    assert bad.result() == {"damaged_shards": 1, "bad_images": 2, "bad_labels": 1}


@pytest.mark.parametrize("damage", ["image", "shard"])
def test_strict_mode_raises_naming_the_shard(tmp_path, damage):
    truncated = write_damaged(str(tmp_path))
    if damage == "shard":
        os.remove(os.path.join(tmp_path, "train-00000-of-00002"))
        os.rename(truncated, os.path.join(tmp_path, "train-00000-of-00001"))
    ds = helpers.dataset(
        str(tmp_path), "train", training=False, global_batch_size=2, strict=True, **COMMON
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="train-0000") as info:
        read_all(ds)
    assert ("damaged shard" if damage == "shard" else "not a whole JPEG") in str(info.value)


def test_clear_errors_before_any_work(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        helpers.dataset(
            str(tmp_path / "missing"), "train", training=True, global_batch_size=8, **COMMON
        )
    with pytest.raises(FileNotFoundError, match="no train shards match"):
        helpers.dataset(str(tmp_path), "train", training=True, global_batch_size=8, **COMMON)
    write_shards(tmp_path, shards=2)
    context = tf.distribute.InputContext(
        num_input_pipelines=3, input_pipeline_id=0, num_replicas_in_sync=3
    )
    with pytest.raises(ValueError, match="2 train shards .* for 3 workers"):
        helpers.dataset(
            str(tmp_path),
            "train",
            training=True,
            global_batch_size=9,
            input_context=context,
            **COMMON,
        )


def test_box_guided_crops_stay_inside_image_and_cover_the_box():
    shape = tf.constant([HEIGHT, WIDTH, 3])
    box = (0.5, 0.6, 0.9, 1.0)  # ymin, xmin, ymax, xmax: lower right
    boxes = tf.constant([[box]], tf.float32)
    for k in range(50):
        y, x, h, w = preprocessing.crop_window(
            shape, boxes, 32, preprocessing.LEGACY, seed=tf.constant([k, 3])
        ).numpy()
        assert 0 <= y and 0 <= x and y + h <= HEIGHT and x + w <= WIDTH and h > 0 and w > 0
        # Overlap with the box, as a fraction of the box (min_object_covered 0.1).
        by0, bx0, by1, bx1 = box[0] * HEIGHT, box[1] * WIDTH, box[2] * HEIGHT, box[3] * WIDTH
        overlap = max(0, min(y + h, by1) - max(y, by0)) * max(0, min(x + w, bx1) - max(x, bx0))
        whole_image = (h, w) == (HEIGHT, WIDTH)
        assert whole_image or overlap >= 0.1 * (by1 - by0) * (bx1 - bx0) - 1


def test_parse_reads_boxes_in_sampler_order_only_when_asked():
    from tf_lars.data import schema

    record = example(jpeg(1), 7, boxes=[(0.1, 0.2, 0.3, 0.4), (0.5, 0.6, 0.7, 0.8)])
    fmt = schema.get("imagenet")
    image, label, boxes = schema.parse(record, fmt)
    assert int(label) == 6 and image.numpy() == jpeg(1)
    # One row per box, (ymin, xmin, ymax, xmax) as the sampler takes them.
    np.testing.assert_allclose(boxes.numpy(), [[[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]]])
    _, _, none = schema.parse(record, fmt, boxes=False)
    assert none.shape == (1, 0, 4)
    # Many records at once: boxes padded to the most any record holds, and
    # counted; a record without an image gets an empty one, a bad image.
    boxless, empty = example(jpeg(2), 3), tf.train.Example().SerializeToString()
    images, labels, padded, counts = schema.parse_many(tf.constant([boxless, record, empty]), fmt)
    assert images.numpy().tolist() == [jpeg(2), jpeg(1), b""]
    assert labels.numpy().tolist() == [2, 6, -2]  # (a missing label is -1, less the offset)
    assert counts.numpy().tolist() == [0, 2, 0] and padded.shape == (3, 2, 4)
    np.testing.assert_allclose(padded[1], boxes[0])
    np.testing.assert_allclose(padded[0], np.zeros((2, 4)))
    _, _, padded, counts = schema.parse_many(tf.constant([boxless, record]), fmt, boxes=False)
    assert padded.shape == (2, 1, 4) and counts.numpy().tolist() == [0, 0]


def test_tpu_eval_crop_is_the_centre_fraction():
    # A 64 x 48 image: side = int(48 * 224 / 256) = 42, offsets ((48-42+1)//2, (64-42+1)//2).
    window = preprocessing._center_crop_window(tf.constant([48, 64, 3]), 224, 32).numpy()
    np.testing.assert_array_equal(window, [3, 11, 42, 42])


@pytest.mark.parametrize("preset", ["tpu", "legacy", "small"])
def test_preprocessing_same_eagerly_and_in_dataset_map(preset):
    recipe = preprocessing.get_preset(preset)
    data = jpeg(5)
    boxes = tf.constant([[[0.1, 0.1, 0.8, 0.9]]], tf.float32)
    seed = tf.constant([1, 2], tf.int64)

    def both(image_jpeg):
        return (
            preprocessing.train_image(image_jpeg, boxes, 32, recipe, seed=seed),
            preprocessing.eval_image(image_jpeg, 32, recipe),
        )

    eager = both(tf.constant(data))
    mapped = next(iter(tf.data.Dataset.from_tensors(data).map(both)))
    for e, m in zip(eager, mapped):
        assert e.shape == (32, 32, 3)
        np.testing.assert_allclose(e.numpy(), m.numpy(), atol=1e-5)


def test_eval_cache_gives_the_same_images(tmp_path):
    write_shards(tmp_path, split="validation", shards=2, per_shard=3)
    kwargs = dict(training=False, global_batch_size=4, **COMMON)
    plain = read_all(helpers.dataset(str(tmp_path), "validation", **kwargs))
    cached = helpers.dataset(str(tmp_path), "validation", cache_eval=True, **kwargs)
    for _ in range(2):
        np.testing.assert_array_equal(read_all(cached)[0], plain[0])


def test_trainer_pipelines_turn_autotuning_off_only_when_asked(tmp_path):
    # Evaluation and PreciseBN pipelines are iterated afresh at each
    # evaluation; deleting an autotuned iterator waits for its tuning thread.
    from tf_lars.training import inputs

    write_shards(tmp_path, "validation", 1, 6)
    data = inputs.spec("imagenet", str(tmp_path), image_size=32, train_examples=6, eval_examples=6)
    context = tf.distribute.InputContext()
    tuned = inputs.dataset_fn(data, 2, False)(context)
    untuned = inputs.dataset_fn(data, 2, False, autotune=False)(context)
    assert tuned.options().autotune.enabled is True
    assert untuned.options().autotune.enabled is False
    images, labels = next(iter(untuned))  # and it still yields batches
    assert images.shape == (2, 32, 32, 3) and labels.shape == (2, 1000)


def test_one_device_without_a_gpu_is_the_default_strategy():
    # No per-device copy of the input pipeline (whose iterators autotune
    # whatever the dataset's options say).
    from tf_lars.training.engines import tensorflow as strategy

    assert strategy.make("one_device") is tf.distribute.get_strategy()


def test_one_host_with_two_replicas_reads_every_record_once_an_epoch(tmp_path):
    # MirroredStrategy over two logical CPU devices: one input pipeline
    # feeds both replicas (as on a TPU host or a multi-GPU machine), so it
    # must read all the shards. Record k of shard s stores label 8 * s + k:
    # its id. Training order (shuffled, repeated): the first epoch's steps
    # must carry each id once.
    from tf_lars.training import inputs

    write_shards(tmp_path, "train", shards=4, per_shard=8, label_of=lambda s, k: 8 * s + k)
    data = inputs.spec(
        "imagenet",
        str(tmp_path),
        image_size=16,
        num_classes=32,
        label_offset=0,
        train_examples=32,
        eval_examples=32,
        shuffle_buffer=64,
        seed=4,
    )
    strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
    batches = iter(
        strategy.distribute_datasets_from_function(
            inputs.dataset_fn(data, 8, True, autotune=False)
        )
    )
    ids = []
    for _ in range(32 // 8):  # one epoch of global batches of 8
        _, labels = next(batches)
        for replica in strategy.experimental_local_results(labels):
            assert replica.shape[0] == 4  # each replica its half of the batch
            ids += np.argmax(replica.numpy(), axis=1).tolist()
    assert sorted(ids) == list(range(32))
