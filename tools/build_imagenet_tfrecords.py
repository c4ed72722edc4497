"""An ImageNet-style image folder -> TFRecord shards in the standard schema.

    python tools/build_imagenet_tfrecords.py --train_dir ILSVRC/train \\
        --validation_dir ILSVRC/val --validation_labels val_labels.txt \\
        --bbox_dir ILSVRC/Annotations --output_dir shards --processes 16

* Training folder: one subfolder per synset (`n01440764/*.JPEG`); labels
  are 1 + the synset's index in sorted order (1..1000, 0 unused), as the
  Model Garden's build_imagenet_data.py writes them.
* Validation folder: synset subfolders, or a flat folder with
  --validation_labels: one synset per line for the files in sorted order,
  or `FILENAME SYNSET` per line.
* --bbox_dir: ILSVRC XML annotations (`SYNSET/NAME.xml` or `NAME.xml`),
  stored as normalized `image/object/bbox/*`. --synset_words fills
  `image/class/text` from lines `n01440764 tench, Tinca tinca`.
* PNG, CMYK and grayscale images are re-encoded as RGB JPEG.
* Shards are written by --processes worker processes with a progress bar;
  finished shards are kept, so an interrupted build resumes when run
  again; unreadable images are listed at the end and do not stop it.
"""

import os
import random
import sys
import xml.etree.ElementTree as ElementTree

import tensorflow as tf
from absl import app, flags, logging

from tf_lars.data import schema, writer

FLAGS = flags.FLAGS
flags.DEFINE_string("train_dir", None, "Folder of synset subfolders.")
flags.DEFINE_string("validation_dir", None, "Flat folder or synset subfolders.")
flags.DEFINE_string("validation_labels", None, "Labels of a flat validation folder.")
flags.DEFINE_string("bbox_dir", None, "ILSVRC XML bounding-box annotations.")
flags.DEFINE_string("synset_words", None, "Lines 'SYNSET human readable text'.")
flags.DEFINE_string("output_dir", None, "Folder for the shards.", required=True)
flags.DEFINE_integer("train_shards", 1024, "Shards for the training split.")
flags.DEFINE_integer("validation_shards", 128, "Shards for the validation split.")
flags.DEFINE_integer("processes", os.cpu_count() or 1, "Worker processes.")
flags.DEFINE_integer("seed", 12345, "Seed of the training set's shuffle.")

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def read_boxes(xml_path):
    """Normalized `(xmin, ymin, xmax, ymax)` boxes of one ILSVRC XML file."""
    root = ElementTree.parse(xml_path).getroot()
    width = float(root.findtext("size/width"))
    height = float(root.findtext("size/height"))
    boxes = []
    for box in root.iter("bndbox"):
        x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        x0, x1 = sorted(min(max(x / width, 0.0), 1.0) for x in (x0, x1))
        y0, y1 = sorted(min(max(y / height, 0.0), 1.0) for y in (y0, y1))
        if x1 > x0 and y1 > y0:
            boxes.append((x0, y0, x1, y1))
    return boxes


def rgb_jpeg(data):
    """`(jpeg bytes, height, width)`; non-JPEG or non-RGB input is re-encoded."""
    if data[:2] == b"\xff\xd8":
        height, width, channels = (int(x) for x in tf.io.extract_jpeg_shape(data))
        if channels == 3:
            return data, height, width
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    jpeg = tf.io.encode_jpeg(image, quality=95, chroma_downsampling=False).numpy()
    return jpeg, int(image.shape[0]), int(image.shape[1])


def encode(item):
    """`(path, label, synset, text, xml_path or None)` -> an Example."""
    path, label, synset, text, xml_path = item
    with tf.io.gfile.GFile(path, "rb") as f:
        jpeg, height, width = rgb_jpeg(f.read())
    boxes = read_boxes(xml_path) if xml_path else []
    return schema.imagenet_example(
        jpeg,
        label,
        height,
        width,
        3,
        filename=os.path.basename(path),
        synset=synset,
        text=text,
        boxes=boxes,
    )


def _images(folder):
    return sorted(f for f in tf.io.gfile.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))


def _box_file(bbox_dir, synset, filename):
    if not bbox_dir:
        return None
    stem = os.path.splitext(filename)[0] + ".xml"
    for candidate in (os.path.join(bbox_dir, synset, stem), os.path.join(bbox_dir, stem)):
        if tf.io.gfile.exists(candidate):
            return candidate
    return None


def read_validation_labels(path, filenames):
    """`{filename: synset}` from one synset a line or `FILENAME SYNSET` lines."""
    with tf.io.gfile.GFile(path) as f:
        lines = [line.split() for line in f if line.strip()]
    if all(len(parts) == 1 for parts in lines):
        if len(lines) != len(filenames):
            raise ValueError(
                f"{path}: {len(lines)} labels for {len(filenames)} "
                "validation images (one synset a line, sorted file order)"
            )
        return {f: parts[0] for f, parts in zip(filenames, lines)}
    return {parts[0]: parts[1] for parts in lines if len(parts) >= 2}


def list_items(folder, synsets, texts, bbox_dir, flat_labels=None):
    """Work items for every image of a split."""
    label_of = {s: i + schema.IMAGENET_LABEL_OFFSET for i, s in enumerate(synsets)}
    items = []
    if flat_labels:
        names = _images(folder)
        synset_of = read_validation_labels(flat_labels, names)
        pairs = [(os.path.join(folder, n), synset_of.get(n)) for n in names]
    else:
        pairs = [
            (os.path.join(folder, s, n), s)
            for s in synsets
            if tf.io.gfile.isdir(os.path.join(folder, s))
            for n in _images(os.path.join(folder, s))
        ]
    for path, synset in pairs:
        if synset not in label_of:
            raise ValueError(
                f"{path}: synset {synset!r} is not among the {len(synsets)} training synsets"
            )
        items.append(
            (
                path,
                label_of[synset],
                synset,
                texts.get(synset, ""),
                _box_file(bbox_dir, synset, os.path.basename(path)),
            )
        )
    return items


def build(
    output_dir,
    train_dir=None,
    validation_dir=None,
    validation_labels=None,
    bbox_dir=None,
    synset_words=None,
    train_shards=1024,
    validation_shards=128,
    processes=1,
    seed=12345,
    progress=True,
):
    """Writes the splits given; returns `(written per split, failures)`."""
    if not train_dir:
        raise ValueError("--train_dir is needed: its subfolders name the synsets")
    if not tf.io.gfile.isdir(train_dir):
        raise FileNotFoundError(f"--train_dir {train_dir} is not a folder")
    synsets = sorted(
        d.rstrip("/")
        for d in tf.io.gfile.listdir(train_dir)
        if tf.io.gfile.isdir(os.path.join(train_dir, d))
    )
    texts = {}
    if synset_words:
        with tf.io.gfile.GFile(synset_words) as f:
            texts = dict(line.rstrip("\n").split(None, 1) for line in f if line.strip())
    written, failures = {}, []
    splits = [("train", train_dir, None, train_shards)]
    if validation_dir:
        if not tf.io.gfile.isdir(validation_dir):
            raise FileNotFoundError(f"--validation_dir {validation_dir} is not a folder")
        splits.append(("validation", validation_dir, validation_labels, validation_shards))
    for split, folder, labels, shards in splits:
        items = list_items(folder, synsets, texts, bbox_dir, labels)
        if split == "train":
            random.Random(seed).shuffle(items)
        logging.info("%s: %d images, %d shards", split, len(items), shards)
        count, failed, skipped = writer.build_shards(
            output_dir, split, items, shards, encode, processes, progress
        )
        written[split] = count
        failures += [(split, name, error) for name, error in failed]
        logging.info("%s: %d images written (%d shards were already done)", split, count, skipped)
    return written, failures


def main(argv):
    del argv
    try:
        _, failures = build(
            FLAGS.output_dir,
            FLAGS.train_dir,
            FLAGS.validation_dir,
            FLAGS.validation_labels,
            FLAGS.bbox_dir,
            FLAGS.synset_words,
            FLAGS.train_shards,
            FLAGS.validation_shards,
            FLAGS.processes,
            FLAGS.seed,
        )
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"build_imagenet_tfrecords: {e}")
    for split, name, error in failures:
        print(f"unreadable {split} image {name}: {error}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} unreadable images were left out", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
