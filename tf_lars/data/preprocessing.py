"""Image preprocessing of the reference ResNet-50 pipelines, as presets.

Training: a random crop drawn by `tf.image.sample_distorted_bounding_box`,
decoded with the fused `tf.io.decode_and_crop_jpeg` (only the crop is
decoded), resized, randomly flipped, normalized. Evaluation: a centre crop.

* `TPU` (tensorflow/tpu models/official/resnet/resnet_preprocessing.py):
  whole image as the box, min_object_covered 0.1, aspect 3/4..4/3, area
  0.08..1, 10 attempts, centre crop when they all fail; bicubic resize;
  eval: centre crop of 224/(224+32) of the shorter side. Mean/std normalized.
* `LEGACY` (MLPerf / Model Garden imagenet_preprocessing.py): the record's
  human boxes, area 0.05..1, 100 attempts, whole image without boxes;
  bilinear; eval: shorter side to 256, centre crop 224. Means subtracted.
* `SMALL`: for 28-32 pixel images (Fashion-MNIST, CIFAR): area 0.8..1,
  10 attempts, bilinear, eval on the whole image.
"""

import tensorflow as tf

from tf_lars.data.presets import (  # noqa: F401  (re-exported)
    IMAGENET_MEAN,
    IMAGENET_STD,
    LEGACY,
    LEGACY_MEAN,
    PRESETS,
    SMALL,
    TPU,
    Preset,
    get_preset,
    per_channel,
)


def _resize(image, size, method):
    image = tf.image.resize(image, [size, size], method=method)
    return tf.clip_by_value(image, 0.0, 255.0)  # bicubic overshoots


def _center_crop_window(shape, size, padding):
    """`[y, x, h, w]` of the centre square: size/(size+padding) of the short side."""
    height, width = shape[0], shape[1]
    side = tf.cast(
        tf.cast(tf.minimum(height, width), tf.float32) * (size / (size + padding)), tf.int32
    )
    return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def normalize(image, preset, dtype=tf.float32):
    """`(image - mean) / std` in `dtype`; for `uint8`, the rounded pixels.

    `uint8` leaves normalization to the model (on the accelerator), which
    saves the host a float pass per image and 3/4 of the bytes sent to the
    device; tf_lars's models normalize their input when it is uint8.

    Args:
        image: pixels in 0..255.
        preset: its `mean` and `std`.
        dtype: the output's dtype.
    """
    if tf.as_dtype(dtype) == tf.uint8:
        return tf.cast(tf.round(image), tf.uint8)
    channels = image.shape[-1]
    mean = tf.constant(per_channel(preset.mean, channels, "mean"), tf.float32)
    std = tf.constant(per_channel(preset.std, channels, "std"), tf.float32)
    return tf.cast(image * (1.0 / std) - mean / std, dtype)


def crop_window(shape, boxes, size, preset=TPU, seed=None):
    """The training crop `[y, x, height, width]` for an image of `shape`.

    `boxes` is `[1, n, 4]` (ymin, xmin, ymax, xmax, normalized), used only
    when `preset.use_boxes`; `seed` (shape [2]) makes the draw stateless.

    Args:
        shape: the image's `[height, width, channels]`.
        boxes, seed: see above.
        size: the output size the crop is resized to.
        preset: a `Preset` (area, aspect ratio and attempt numbers).
    """
    if not preset.use_boxes:
        boxes = tf.zeros([1, 0, 4], tf.float32)
    kwargs = dict(
        bounding_boxes=boxes,
        min_object_covered=preset.min_object_covered,
        aspect_ratio_range=preset.aspect_ratio_range,
        area_range=preset.area_range,
        max_attempts=preset.max_attempts,
        use_image_if_no_bounding_boxes=True,
    )
    if seed is None:
        begin, crop_size, _ = tf.image.sample_distorted_bounding_box(shape, **kwargs)
    else:
        begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape, seed=seed, **kwargs
        )
    window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
    if preset.fallback_center_crop:
        # The sampler returns the whole image when every attempt failed.
        failed = tf.reduce_all(tf.equal(crop_size[:2], shape[:2]))
        window = tf.cond(
            failed,
            lambda: _center_crop_window(shape, size, preset.eval_crop_padding),
            lambda: window,
        )
    return window


def train_image(jpeg, boxes, size, preset=TPU, channels=3, dtype=tf.float32, seed=None):
    """Random crop (fused decode), resize, flip, normalize: `[size, size, channels]`.

    See `crop_window` for `boxes` and `seed`.

    Args:
        jpeg: the JPEG bytes (a scalar string tensor).
        boxes, seed: see `crop_window`.
        size: the output's height and width.
        preset: a `Preset` (crop, resize and normalization numbers).
        channels: the channels decoded.
        dtype: the output's dtype (see `normalize`).
    """
    window = crop_window(tf.io.extract_jpeg_shape(jpeg), boxes, size, preset, seed)
    image = tf.io.decode_and_crop_jpeg(jpeg, window, channels=channels)
    image = _resize(tf.cast(image, tf.float32), size, preset.resize_method)
    image.set_shape([size, size, channels])
    # Flipped after normalizing (the two commute): fewer bytes to move in uint8.
    image = normalize(image, preset, dtype)
    if seed is None:
        return tf.image.random_flip_left_right(image)
    return tf.image.stateless_random_flip_left_right(image, seed=seed + 1)


def eval_image(jpeg, size, preset=TPU, channels=3, dtype=tf.float32):
    """Deterministic centre crop, resize, normalize: `[size, size, channels]`.

    Args:
        jpeg: the JPEG bytes (a scalar string tensor).
        size: the output's height and width.
        preset: a `Preset` (its `eval_crop_padding`, `eval_resize_min`, mean and std).
        channels: the channels decoded.
        dtype: the output's dtype (see `normalize`).
    """
    if preset.eval_resize_min > 0:
        image = tf.cast(tf.io.decode_jpeg(jpeg, channels=channels), tf.float32)
        shape = tf.shape(image)
        scale = preset.eval_resize_min / tf.cast(tf.minimum(shape[0], shape[1]), tf.float32)
        new_hw = tf.cast(tf.round(tf.cast(shape[:2], tf.float32) * scale), tf.int32)
        image = tf.image.resize(image, new_hw, method=preset.resize_method)
        image = tf.clip_by_value(tf.image.resize_with_crop_or_pad(image, size, size), 0.0, 255.0)
    else:
        shape = tf.io.extract_jpeg_shape(jpeg)
        window = _center_crop_window(shape, size, preset.eval_crop_padding)
        image = tf.io.decode_and_crop_jpeg(jpeg, window, channels=channels)
        image = _resize(tf.cast(image, tf.float32), size, preset.resize_method)
    image.set_shape([size, size, channels])
    return normalize(image, preset, dtype)


__all__ = ["train_image", "eval_image", "normalize", "crop_window"]
