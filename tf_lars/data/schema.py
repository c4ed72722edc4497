"""The TFRecord schemas tf_lars reads and writes.

`IMAGENET`: the standard ImageNet schema, as the TensorFlow Model Garden's
`build_imagenet_data.py` writes it (tensorflow/models,
research/inception/inception/data/build_imagenet_data.py) and the reference
ResNet-50 pipelines read it. Labels are stored 1..1000 (0 unused), so the
reader subtracts `IMAGENET_LABEL_OFFSET`. Shards: `train-00000-of-01024`,
`validation-00000-of-00128`.

`TFDS`: shards prepared by TensorFlow Datasets for `imagenet2012`
(`image`, 0-based `label`, `file_name`; files `*-train.tfrecord-*`). Read
without importing tensorflow_datasets.
"""

import collections

import tensorflow as tf

# Standard ImageNet shards store labels 1..1000; 0 is unused (background).
IMAGENET_LABEL_OFFSET = 1

Schema = collections.namedtuple(
    "Schema", "name image_key label_key filename_key has_boxes label_offset pattern"
)

IMAGENET = Schema(
    name="imagenet",
    image_key="image/encoded",
    label_key="image/class/label",
    filename_key="image/filename",
    has_boxes=True,
    label_offset=IMAGENET_LABEL_OFFSET,
    pattern="{split}-*-of-*",
)

TFDS = Schema(
    name="tfds",
    image_key="image",
    label_key="label",
    filename_key="file_name",
    has_boxes=False,
    label_offset=0,
    pattern="*-{split}.tfrecord-*",
)

SCHEMAS = {s.name: s for s in (IMAGENET, TFDS)}
BOX_KEYS = tuple(f"image/object/bbox/{k}" for k in ("ymin", "xmin", "ymax", "xmax"))


def get(name):
    if name not in SCHEMAS:
        raise ValueError(f"Unknown data format {name!r}: use one of {sorted(SCHEMAS)}")
    return SCHEMAS[name]


def feature_map(schema, boxes=True):
    """What `tf.io.parse_single_example` reads for `schema`: the image, the
    label and (`boxes` and the schema has them) the boxes; nothing else, as
    each feature parsed costs time on every record."""
    features = {
        schema.image_key: tf.io.FixedLenFeature([], tf.string),
        schema.label_key: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    }
    if boxes and schema.has_boxes:
        features.update({k: tf.io.VarLenFeature(tf.float32) for k in BOX_KEYS})
    return features


def parse(serialized, schema, label_offset=None, boxes=True):
    """Returns `(jpeg_bytes, label, boxes)`; boxes `[1, n, 4]` (ymin, xmin, ymax, xmax).

    `label_offset` defaults to the schema's (1 for ImageNet shards, 0 for
    TFDS); pass 0 for ImageNet-schema shards that store 0-based labels.
    `boxes=False` skips parsing them (`[1, 0, 4]` is returned). One record
    of `parse_many`.

    Args:
        serialized: one record's bytes (a scalar string tensor).
        schema: a schema of `SCHEMAS` ("imagenet" or "tfds").
        label_offset: subtracted from the stored label (see above).
        boxes: whether to parse the bounding boxes.
    """
    jpegs, labels, padded, counts = parse_many(
        tf.reshape(serialized, [1]), schema, label_offset, boxes
    )
    return jpegs[0], labels[0], padded[:, : counts[0]]


def parse_many(serialized, schema, label_offset=None, boxes=True):
    """`parse` for a vector of `n` records at once: `(jpegs, labels, boxes,
    counts)`; boxes `[n, m, 4]` padded with zeros (m at least 1), `counts`
    each record's number of boxes (zeros without them). A record without an
    image gets an empty one (not a JPEG), without a label -1."""
    offset = schema.label_offset if label_offset is None else label_offset
    features = feature_map(schema, boxes)
    features[schema.image_key] = tf.io.FixedLenFeature([], tf.string, default_value="")
    parsed = tf.io.parse_example(serialized, features)
    labels = tf.cast(parsed[schema.label_key], tf.int32) - offset
    n = tf.size(serialized, tf.int64)
    if boxes and schema.has_boxes:
        coords = [parsed[k] for k in BOX_KEYS]
        shape = [n, tf.maximum(coords[0].dense_shape[1], 1)]
        dense = [tf.sparse.to_dense(tf.sparse.reset_shape(c, shape)) for c in coords]
        counts = tf.math.bincount(
            tf.cast(coords[0].indices[:, 0], tf.int32), minlength=tf.cast(n, tf.int32)
        )
        return parsed[schema.image_key], labels, tf.stack(dense, axis=-1), counts
    return parsed[schema.image_key], labels, tf.zeros([n, 1, 4]), tf.zeros([n], tf.int32)


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def imagenet_example(
    jpeg, label, height, width, channels=3, filename="", synset="", text="", boxes=()
):
    """One `tf.train.Example` in the ImageNet schema.

    `label` is stored as given (1-based for standard shards); `boxes` are
    normalized `(xmin, ymin, xmax, ymax)` tuples.

    Args:
        jpeg: the image's JPEG bytes.
        label: the class, stored as given.
        height, width, channels: the image's size.
        filename, synset, text: `image/filename`, `image/class/synset` and `image/class/text`.
        boxes: the object boxes (see above).
    """

    def enc(s):
        return s.encode() if isinstance(s, str) else s

    feature = {
        "image/encoded": _bytes([jpeg]),
        "image/format": _bytes([b"JPEG"]),
        "image/filename": _bytes([enc(filename)]),
        "image/height": _ints([height]),
        "image/width": _ints([width]),
        "image/channels": _ints([channels]),
        "image/colorspace": _bytes([b"RGB" if channels == 3 else b"Grayscale"]),
        "image/class/label": _ints([label]),
        "image/class/synset": _bytes([enc(synset)]),
        "image/class/text": _bytes([enc(text)]),
        "image/object/bbox/label": _ints([label] * len(boxes)),
    }
    for i, key in enumerate(("xmin", "ymin", "xmax", "ymax")):
        feature[f"image/object/bbox/{key}"] = _floats([b[i] for b in boxes])
    return tf.train.Example(features=tf.train.Features(feature=feature))


def shard_name(split, index, num_shards):
    """`train-00003-of-01024`, as the standard shards are named.

    Args:
        split: the split's name.
        index: the shard's index, from 0.
        num_shards: shards of the split.
    """
    return f"{split}-{index:05d}-of-{num_shards:05d}"


__all__ = ["feature_map", "parse", "imagenet_example", "shard_name"]
