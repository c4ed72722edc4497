"""Fashion-MNIST's IDX files -> TFRecord shards in the ImageNet schema.

    python tools/build_fashion_mnist_tfrecords.py --output_dir data/fashion_mnist

Reads the four gzipped IDX files (Debian's dataset-fashion-mnist, or
--idx_dir) and writes `train-0000i-of-N` (60,000 images) and
`validation-0000i-of-M` (the 10,000 test images), so the ImageNet reader and
its preprocessing read them unchanged. Images are JPEG (quality --quality),
kept grayscale by default (--channels 1, `image/colorspace` "Grayscale");
--channels 3 replicates them to RGB. Labels are stored 1..10 like ImageNet's
1..1000 (the reader subtracts 1); synset and text hold the class name.
Finished shards are kept: running it again completes an interrupted build.
"""

import sys

import numpy as np
from absl import app, flags, logging

import tensorflow as tf

from tf_lars.data import fashion_mnist, schema, writer

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Folder for the shards.", required=True)
flags.DEFINE_string("idx_dir", None, "Folder with the four IDX files (default: "
                    f"{fashion_mnist.DEBIAN_DIR} or ${fashion_mnist.ENV_VAR}).")
flags.DEFINE_integer("train_shards", 8, "Shards for the training split.")
flags.DEFINE_integer("validation_shards", 2, "Shards for the test split.")
flags.DEFINE_enum("channels", "1", ["1", "3"], "1: grayscale JPEG; 3: RGB JPEG.")
flags.DEFINE_integer("quality", 95, "JPEG quality, 1..100.")
flags.DEFINE_integer("limit", 0, "Write only the first N images of each split (0: all).")


def encode(item, channels=1, quality=95):
    """`(index, image uint8 [28, 28], label 0..9)` -> an Example."""
    index, image, label = item
    pixels = np.repeat(image[..., None], channels, axis=-1)
    jpeg = tf.io.encode_jpeg(pixels, quality=quality, chroma_downsampling=False).numpy()
    name = fashion_mnist.CLASS_NAMES[label]
    return schema.imagenet_example(
        jpeg, int(label) + schema.IMAGENET_LABEL_OFFSET, 28, 28, channels,
        filename=f"{index:05d}.jpg", synset=name, text=name)


class _Encoder:
    """A picklable `encode` with the flags' channels and quality bound."""

    def __init__(self, channels, quality):
        self.channels, self.quality = channels, quality

    def __call__(self, item):
        return encode(item, self.channels, self.quality)


def build(output_dir, idx_dir=None, train_shards=8, validation_shards=2,
          channels=1, quality=95, limit=0):
    """Writes both splits; returns `{split: records written}`."""
    written = {}
    for split, source, shards in (("train", "train", train_shards),
                                  ("validation", "test", validation_shards)):
        images, labels = fashion_mnist.load(source, idx_dir)
        n = limit or len(images)
        items = [(i, images[i], int(labels[i])) for i in range(n)]
        count, failures, skipped = writer.build_shards(
            output_dir, split, items, shards, _Encoder(channels, quality), progress=False)
        for name, error in failures:
            logging.error("%s image %s: %s", split, name, error)
        written[split] = count
        logging.info("%s: %d images in %d new shards (%d already there) in %s",
                     split, count, shards - skipped, skipped, output_dir)
    return written


def main(argv):
    del argv
    try:
        build(FLAGS.output_dir, FLAGS.idx_dir, FLAGS.train_shards,
              FLAGS.validation_shards, int(FLAGS.channels), FLAGS.quality, FLAGS.limit)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"build_fashion_mnist_tfrecords: {e}")


if __name__ == "__main__":
    app.run(main)
