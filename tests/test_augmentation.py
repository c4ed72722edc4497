"""Training augmentation, seen in what the pipeline yields (not in its code).

Every pixel of the test image says where it came from: red grows with x,
green with y. A training image's corners then give its crop window (and
whether it was flipped), which must vary within the preset's ranges; an
evaluation image must be the same every time.
"""

import keras
import numpy as np
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("tf.data pipelines need TensorFlow", allow_module_level=True)

import helpers  # noqa: E402
import tensorflow as tf  # noqa: E402
from test_data import example  # noqa: E402

from tf_lars.data import preprocessing  # noqa: E402

HEIGHT, WIDTH, SIZE, COPIES = 120, 160, 32, 240


def coordinate_jpeg():
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    pixels = np.stack(
        [x * 255 / (WIDTH - 1), y * 255 / (HEIGHT - 1), np.full(x.shape, 128)], axis=-1
    )
    return tf.io.encode_jpeg(np.round(pixels).astype(np.uint8), quality=100).numpy()


def images(tmp_path, training, preset="tpu", seed=7):
    """COPIES pipeline outputs of the coordinate image, as float pixels."""
    with tf.io.TFRecordWriter(str(tmp_path / "train-00000-of-00001")) as w:
        for _ in range(COPIES):
            w.write(example(coordinate_jpeg(), 1))
    ds = helpers.dataset(
        str(tmp_path),
        "train",
        training=training,
        seed=seed,
        global_batch_size=COPIES,
        image_size=SIZE,
        num_classes=10,
        preset=preset,
        dtype=tf.uint8,
        shuffle_buffer=1,
    )
    return next(iter(ds))[0].numpy().astype(np.float64)


def windows(batch):
    """Per image: flipped, and the crop's (x0, x1, y0, y1) as fractions."""
    red, green = batch[..., 0] / 255, batch[..., 1] / 255
    left, right = red[:, :, 0].mean(1), red[:, :, -1].mean(1)
    top, bottom = green[:, 0, :].mean(1), green[:, -1, :].mean(1)
    flipped = left > right
    x0, x1 = np.minimum(left, right), np.maximum(left, right)
    # The resize samples pixel centres: widen by half an output pixel.
    half_x, half_y = (x1 - x0) / (2 * (SIZE - 1)), (bottom - top) / (2 * (SIZE - 1))
    return flipped, x0 - half_x, x1 + half_x, top - half_y, bottom + half_y


@pytest.mark.parametrize("preset", ["tpu", "small"])
def test_training_crops_vary_within_the_preset_and_half_are_flipped(tmp_path, preset):
    recipe = preprocessing.get_preset(preset)
    flipped, x0, x1, y0, y1 = windows(images(tmp_path, True, preset))
    # About half flipped: 120 of 240 expected, 3.9 standard deviations apart.
    assert 60 <= flipped.sum() <= 180, flipped.sum()
    area = (x1 - x0) * (y1 - y0)
    aspect = (x1 - x0) * WIDTH / ((y1 - y0) * HEIGHT)
    low, high = recipe.area_range
    assert area.min() >= low - 0.03 and area.max() <= high + 0.03, (area.min(), area.max())
    low, high = recipe.aspect_ratio_range
    assert aspect.min() >= low - 0.05 and aspect.max() <= high + 0.05
    # They vary: in scale over much of the range, in aspect, in place.
    span = recipe.area_range[1] - recipe.area_range[0]
    assert np.ptp(area) > 0.5 * span, np.ptp(area)
    assert np.ptp(aspect) > 0.2
    assert len(set(zip(np.round(x0, 2), np.round(y0, 2)))) > COPIES // 8  # one if fixed


def test_evaluation_images_never_vary_and_are_the_centre(tmp_path):
    batch = images(tmp_path, False)
    np.testing.assert_array_equal(batch, np.broadcast_to(batch[0], batch.shape))
    flipped, x0, x1, y0, y1 = windows(batch[:1])
    assert not flipped[0]
    # The TPU preset's centre crop: size / (size + 32) of the shorter side
    # (224/256 at ImageNet's size), centred.
    side = SIZE / (SIZE + 32) * HEIGHT
    np.testing.assert_allclose(
        [x0[0], x1[0]], [(WIDTH - side) / 2 / WIDTH, (WIDTH + side) / 2 / WIDTH], atol=0.02
    )
    np.testing.assert_allclose(
        [y0[0], y1[0]], [(HEIGHT - side) / 2 / HEIGHT, (HEIGHT + side) / 2 / HEIGHT], atol=0.02
    )
