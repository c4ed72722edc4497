"""Building blocks shared by tf_lars's models (channels-last Keras layers)."""

import keras
from keras import ops

from tf_lars.data.presets import per_channel

# The reference ResNet/TPU recipes: BatchNorm decay 0.9, epsilon 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def conv_init():
    """He normal (fan-out) for convolutions, as the reference ResNet-50s.

    A new initializer for every layer: an unseeded Keras initializer takes
    its seed when it is created, so one shared instance would give every
    layer of the same shape the same weights, and, created at import time
    (before `keras.utils.set_random_seed`), different weights in each run.
    """
    return keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal")


def conv(filters, kernel, strides=1, name=None):
    """A bias-free convolution (a BatchNorm follows), "same" padding."""
    return keras.layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer=conv_init(),
        name=name,
    )


@keras.saving.register_keras_serializable(package="tf_lars")
class BatchNormalization(keras.layers.BatchNormalization):
    """Keras's BatchNormalization, its batch statistics taken in one pass.

    `variance = E[x^2] - E[x]^2`, in float32 (the layer upcasts its input),
    reads the activations once where Keras's `ops.moments` reads them twice
    (mean, then squared deviations); Flax computes them the same way. The
    cancellation it risks needs |mean| far above the standard deviation,
    which BatchNorm's inputs do not have; the result is clipped at 0. Masked
    or synchronized statistics fall back to Keras's own.
    """

    def _moments(self, inputs, mask):
        if mask is not None or self.synchronized:
            return super()._moments(inputs, mask)
        mean = ops.mean(inputs, axis=self._reduction_axes)
        mean_of_squares = ops.mean(ops.square(inputs), axis=self._reduction_axes)
        return mean, ops.maximum(mean_of_squares - ops.square(mean), 0.0)


def batch_norm(name=None, zero_gamma=False):
    return BatchNormalization(
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        name=name,
        gamma_initializer="zeros" if zero_gamma else "ones",
    )


def conv_bn_relu(x, filters, kernel, strides=1, name=None):
    x = conv(filters, kernel, strides, name=f"{name}_conv")(x)
    x = batch_norm(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def image_input(image_size, channels, input_dtype, mean, std, name="image"):
    """The model's input; uint8 pixels are normalized here, on the device.

    The input pipeline can hand over uint8 images (see
    `tf_lars.data.preprocessing.normalize`): 4x fewer bytes to the device and
    no float pass on the host. Float input is taken as already normalized.
    """
    inputs = keras.Input((image_size, image_size, channels), dtype=input_dtype, name=name)
    x = inputs
    if input_dtype == "uint8":
        mean, std = (per_channel(v, channels, what) for v, what in ((mean, "mean"), (std, "std")))
        variance = [s * s for s in std]
        x = keras.layers.Normalization(mean=mean, variance=variance, name="normalize")(x)
    return inputs, x


def classifier(x, num_classes, name="logits"):
    """Float32 logits, whatever the compute dtype (stable softmax and loss)."""
    x = keras.layers.Dense(
        num_classes, name=name, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01)
    )(x)
    return keras.layers.Activation("linear", dtype="float32", name=f"{name}_float32")(x)
