"""Fashion-MNIST's IDX files -> TFRecord shards in the ImageNet schema.

    python tools/build_fashion_mnist_tfrecords.py --output_dir data/fashion_mnist

Reads the four gzipped IDX files (Debian's dataset-fashion-mnist, or
--idx_dir) and writes `train-0000i-of-N` (60,000 images) and
`validation-0000i-of-M` (the 10,000 test images), so the ImageNet reader and
its preprocessing read them unchanged. Images are JPEG (quality --quality),
kept grayscale by default (--channels 1, `image/colorspace` "Grayscale");
--channels 3 replicates them to RGB. Labels are stored 1..10 like ImageNet's
1..1000 (the reader subtracts 1); synset and text hold the class name.

--holdout=N moves N training images, drawn at random with --holdout_seed
(the same N of each class, so the held-out part has the training set's
class balance), to `holdout-0000i-of-K` shards: a part of the training set
for choosing hyperparameters (`tf-lars-train --eval_split=holdout`), leaving
the test images for the final report.

Finished shards are kept: running it again completes an interrupted build.
`build.json` records the settings and the images in each split; a build
into a folder made with other settings stops with an error.
"""

import json
import os
import sys

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from tf_lars.data import fashion_mnist, schema, writer

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Folder for the shards.", required=True)
flags.DEFINE_string(
    "idx_dir",
    None,
    "Folder with the four IDX files (default: "
    f"{fashion_mnist.DEBIAN_DIR} or ${fashion_mnist.ENV_VAR}).",
)
flags.DEFINE_integer("train_shards", 8, "Shards for the training split.")
flags.DEFINE_integer("validation_shards", 2, "Shards for the test split.")
flags.DEFINE_enum("channels", "1", ["1", "3"], "1: grayscale JPEG; 3: RGB JPEG.")
flags.DEFINE_integer("quality", 95, "JPEG quality, 1..100.")
flags.DEFINE_integer("limit", 0, "Write only the first N images of each split (0: all).")
flags.DEFINE_integer(
    "holdout",
    0,
    "Training images moved to `holdout` shards (a multiple of 10: the same number of each class).",
)
flags.DEFINE_integer("holdout_seed", 0, "Seed of the held-out draw.")
flags.DEFINE_integer("holdout_shards", 2, "Shards for the held-out split.")
INFO_FILE = "build.json"


def encode(item, channels=1, quality=95):
    """`(index, image uint8 [28, 28], label 0..9)` -> an Example."""
    index, image, label = item
    pixels = np.repeat(image[..., None], channels, axis=-1)
    jpeg = tf.io.encode_jpeg(pixels, quality=quality, chroma_downsampling=False).numpy()
    name = fashion_mnist.CLASS_NAMES[label]
    return schema.imagenet_example(
        jpeg,
        int(label) + schema.IMAGENET_LABEL_OFFSET,
        28,
        28,
        channels,
        filename=f"{index:05d}.jpg",
        synset=name,
        text=name,
    )


class _Encoder:
    """A picklable `encode` with the flags' channels and quality bound."""

    def __init__(self, channels, quality):
        self.channels, self.quality = channels, quality

    def __call__(self, item):
        return encode(item, self.channels, self.quality)


def _check_info(output_dir, info):
    """Refuses to mix shards made with other settings; records these."""
    path = os.path.join(output_dir, INFO_FILE)
    if os.path.exists(path):
        with open(path) as f:
            earlier = json.load(f)
        if earlier != info:
            changed = sorted(k for k in set(info) | set(earlier) if info.get(k) != earlier.get(k))
            raise ValueError(
                f"{output_dir} holds shards built with other settings "
                f"({', '.join(changed)} differ, see {path}): use another "
                "--output_dir or delete that folder"
            )
    os.makedirs(output_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(info, f, indent=2)


def build(
    output_dir,
    idx_dir=None,
    train_shards=8,
    validation_shards=2,
    channels=1,
    quality=95,
    limit=0,
    holdout=0,
    holdout_seed=0,
    holdout_shards=2,
):
    """Writes the splits; returns `{split: records written}`.

    Every split's size is also recorded in `output_dir/build.json`
    (`examples`), for tools that need them (tools/large_batch_study.py).
    """
    train_images, train_labels = fashion_mnist.load("train", idx_dir)
    test_images, test_labels = fashion_mnist.load("test", idx_dir)
    n = limit or len(train_labels)
    kept, held = (np.arange(n), np.arange(0))
    if holdout:
        kept, held = fashion_mnist.split_holdout(train_labels[:n], holdout, holdout_seed)
    plan = [
        ("train", train_images, train_labels, kept, train_shards),
        (
            "validation",
            test_images,
            test_labels,
            np.arange(limit or len(test_labels)),
            validation_shards,
        ),
    ]
    if holdout:
        plan.append(("holdout", train_images, train_labels, held, holdout_shards))
    info = dict(
        channels=channels,
        quality=quality,
        limit=limit,
        holdout=holdout,
        holdout_seed=holdout_seed if holdout else None,
        shards={split: shards for split, _, _, _, shards in plan},
        examples={split: len(index) for split, _, _, index, _ in plan},
    )
    _check_info(output_dir, info)
    written = {}
    for split, images, labels, index, shards in plan:
        # Each record's filename is its index in the IDX file it came from.
        items = [(int(i), images[i], int(labels[i])) for i in index]
        count, failures, skipped = writer.build_shards(
            output_dir, split, items, shards, _Encoder(channels, quality), progress=False
        )
        for name, error in failures:
            logging.error("%s image %s: %s", split, name, error)
        written[split] = count
        logging.info(
            "%s: %d images in %d new shards (%d already there) in %s",
            split,
            count,
            shards - skipped,
            skipped,
            output_dir,
        )
    return written


def main(argv):
    del argv
    try:
        build(
            FLAGS.output_dir,
            FLAGS.idx_dir,
            FLAGS.train_shards,
            FLAGS.validation_shards,
            int(FLAGS.channels),
            FLAGS.quality,
            FLAGS.limit,
            FLAGS.holdout,
            FLAGS.holdout_seed,
            FLAGS.holdout_shards,
        )
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"build_fashion_mnist_tfrecords: {e}")


if __name__ == "__main__":
    app.run(main)
