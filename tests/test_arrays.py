"""tf_lars.data.arrays: in-memory batches and on-device augmentation (any backend)."""

import keras
import numpy as np
import pytest

from tf_lars.data import arrays


def test_training_batches_are_full_and_each_epoch_a_new_permutation():
    images = np.arange(10, dtype=np.uint8)[:, None, None].repeat(4, 1).repeat(4, 2)
    labels = np.arange(10) % 3
    batches = arrays.Batches(images, labels, 4, 3, training=True, seed=1)
    assert len(batches) == 2  # 10 // 4: the remainder is left out
    seen = []
    for _epoch in range(3):
        epoch_ids = []
        for i in range(len(batches)):
            x, y = batches[i]
            assert x.shape == (4, 4, 4, 1) and x.dtype == np.uint8 and y.shape == (4, 3)
            ids = x[:, 0, 0, 0].astype(int)
            np.testing.assert_array_equal(y, np.eye(3)[ids % 3])  # labels travel along
            epoch_ids += ids.tolist()
        assert len(set(epoch_ids)) == 8  # no image twice within an epoch
        seen.append(epoch_ids)
        batches.on_epoch_end()
    # Every epoch a new order, the first and the third too.
    assert seen[0] != seen[1] and seen[1] != seen[2] and seen[0] != seen[2]


def test_evaluation_batches_cover_every_image_in_order():
    images = np.zeros((10, 2, 2, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(10)
    batches = arrays.Batches(images, np.zeros(10, int), 4, 2, training=False)
    assert len(batches) == 3
    got = np.concatenate([batches[i][0][:, 0, 0, 0] for i in range(3)])
    np.testing.assert_array_equal(got, np.arange(10))


def test_bad_arrays_are_refused():
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        arrays.Batches(np.zeros((3, 2, 2)), np.zeros(2), 1, 2, training=True)
    with pytest.raises(ValueError, match="batch_size=8 is larger than the 3 training images"):
        arrays.Batches(np.zeros((3, 2, 2)), np.zeros(3), 8, 2, training=True)


def test_augmentation_acts_in_training_only():
    inputs = keras.Input((28, 28, 1), dtype="uint8")
    passthrough = keras.Model(inputs, keras.layers.Flatten()(keras.ops.cast(inputs, "float32")))
    wrapped = arrays.with_augmentation(passthrough, seed=3)
    rng = np.random.default_rng(0)
    # Smooth images: a zoom or shift moves pixels without changing their range.
    images = np.kron(rng.integers(0, 256, (8, 7, 7, 1)), np.ones((1, 4, 4, 1))).astype(np.uint8)
    served = keras.ops.convert_to_numpy(wrapped(images, training=False))
    np.testing.assert_array_equal(served, images.reshape(8, -1).astype(np.float32))
    trained = keras.ops.convert_to_numpy(wrapped(images, training=True))
    assert trained.shape == served.shape
    assert trained.min() >= 0 and trained.max() <= 255
    assert np.mean(trained != served) > 0.2  # most images moved
