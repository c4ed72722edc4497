"""Where TensorFlow Datasets keeps a data set's shards, and their split sizes.

TFDS writes `DATA_DIR/imagenet2012/VERSION/imagenet2012-SPLIT.tfrecord-NNNNN-of-NNNNN`
with `dataset_info.json` beside the shards (TFDS 4.9; read here without
importing tensorflow_datasets). `resolve` accepts the TFDS root, the data
set's folder or the version folder.
"""

import json
import os
import re

import tensorflow as tf

_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)/?$")


def _versions(folder):
    found = [name.rstrip("/") for name in tf.io.gfile.listdir(folder) if _VERSION.match(name)]
    return sorted(found, key=lambda v: tuple(int(p) for p in v.split(".")))


def resolve(data_dir, name="imagenet2012"):
    """`(folder of the shards, {split: examples}, note or None)`.

    The newest version is chosen when there are several (the note says which
    and names the others). Split sizes come from `dataset_info.json` (empty
    when there is none). Shards in TFDS's `array_record` format, which
    tf.data cannot read, raise FileNotFoundError saying what to do.

    Args:
        data_dir: a TFDS root, its data set's folder, or a version folder.
        name: the data set. Defaults to "imagenet2012".
    """
    folder, note = data_dir, None
    if not tf.io.gfile.exists(os.path.join(data_dir, "dataset_info.json")):
        root = os.path.join(data_dir, name)
        root = root if tf.io.gfile.isdir(root) else data_dir
        versions = _versions(root) if tf.io.gfile.isdir(root) else []
        if versions:
            folder = os.path.join(root, versions[-1])
            if len(versions) > 1:
                note = (
                    f"TFDS {name}: reading version {versions[-1]} in {folder} (also there: "
                    f"{', '.join(versions[:-1])}; pass its folder as --data_dir to choose)"
                )
    info_path = os.path.join(folder, "dataset_info.json")
    sizes = {}
    if tf.io.gfile.exists(info_path):
        with tf.io.gfile.GFile(info_path) as f:
            info = json.load(f)
        sizes = {
            s["name"]: sum(int(n) for n in s.get("shardLengths", []))
            for s in info.get("splits", [])
            if s.get("shardLengths")
        }
    if tf.io.gfile.glob(os.path.join(folder, "*.array_record-*")) and not tf.io.gfile.glob(
        os.path.join(folder, "*.tfrecord-*")
    ):
        raise FileNotFoundError(
            f"{folder} holds TFDS array_record shards, which tf.data cannot read: prepare "
            f"the data set again as TFRecord (tfds.builder('{name}', "
            "file_format='tfrecord').download_and_prepare())"
        )
    return folder, sizes, note


__all__ = ["resolve"]
