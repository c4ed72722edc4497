"""In-memory image batches for `model.fit`, on any Keras backend.

Where `tf.data` is not available (the JAX backend on a machine without
TensorFlow), a data set small enough to hold as uint8 arrays (Fashion-MNIST)
is fed through a `keras.utils.PyDataset`, and `with_augmentation` does the
training augmentation on the device with Keras's preprocessing layers.
"""

import math

import keras
import numpy as np


class Batches(keras.utils.PyDataset):
    """`(uint8 images [b, h, w, c], one-hot labels)` from arrays in memory.

    Training: a new seeded order every epoch and full batches only (the
    remainder is left out, as in the TFRecord pipeline). Otherwise every
    image once, in order; the last batch may be smaller.

    Args:
        images: uint8 `[n, h, w, c]`.
        labels: int class indices `[n]`.
        batch_size: images a batch.
        num_classes: the one-hot labels' width.
        training: shuffled full batches (True) or every image once in order.
        seed: the shuffles' seed. Defaults to 0.
        **kwargs: `keras.utils.PyDataset`'s (`workers`, ...).
    """

    def __init__(self, images, labels, batch_size, num_classes, training, seed=0, **kwargs):
        super().__init__(**kwargs)
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if training and batch_size > len(images):
            raise ValueError(
                f"batch_size={batch_size} is larger than the {len(images)} training images"
            )
        self.images = images if images.ndim == 4 else images[..., None]
        self.labels = np.asarray(labels)
        self.batch_size, self.training = batch_size, training
        self.one_hot = np.eye(num_classes, dtype="float32")
        self._rng = np.random.default_rng(seed)
        self._order = np.arange(len(images))
        self.on_epoch_end()

    def __len__(self):
        n = len(self.images)
        return n // self.batch_size if self.training else math.ceil(n / self.batch_size)

    def __getitem__(self, index):
        chosen = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        return self.images[chosen], self.one_hot[self.labels[chosen]]

    def on_epoch_end(self):
        if self.training:
            self._order = self._rng.permutation(len(self.images))


def with_augmentation(model, zoom=0.1, shift=0.05, seed=None):
    """`model` behind random flips, zooms and shifts (training only).

    Approximates the `small` preset of the TFRecord pipeline (a random crop
    of 80-100% of the area, resized back, flipped): each side zoomed in by
    up to `zoom`, shifted by up to `shift` of the side, reflecting at the
    edges. The returned model takes and passes on uint8 images; save
    `model` itself, not the wrapper.

    Args:
        model: the Keras model to train.
        zoom: the largest zoom, a fraction of the side. Defaults to 0.1.
        shift: the largest shift, a fraction of the side. Defaults to 0.05.
        seed: the augmentation's seed, or None.
    """
    layers = keras.layers
    inputs = keras.Input(model.input_shape[1:], dtype="uint8", name="image")
    x = keras.ops.cast(inputs, "float32")
    x = layers.RandomFlip("horizontal", seed=seed)(x)
    x = layers.RandomZoom((-zoom, 0.0), (-zoom, 0.0), fill_mode="reflect", seed=seed)(x)
    x = layers.RandomTranslation(shift, shift, fill_mode="reflect", seed=seed)(x)
    x = keras.ops.cast(keras.ops.round(keras.ops.clip(x, 0.0, 255.0)), "uint8")
    return keras.Model(inputs, model(x), name=f"{model.name}_augmented")


__all__ = ["Batches", "with_augmentation"]
