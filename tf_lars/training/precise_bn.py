"""Precise BatchNorm statistics: the moving mean and variance recomputed
from training batches with the final weights.

BatchNorm's moving averages mix statistics of the weights of the last
~1/(1 - momentum) steps. A large-batch run takes few steps, each of them a
large change, so its moving averages describe weights the model no longer
has (Wu and Johnson, "Rethinking 'Batch' in BatchNorm", 2021, call the
remedy PreciseBN). `PreciseBN` runs the model in training mode over a few
batches, takes every BatchNorm layer's per-channel mean and variance of its
input in each batch, pools them into the population's (the mean of the
batch means; the mean of the batch variances plus the variance of the batch
means), and writes them into the layer's moving mean and variance.

Written with `keras.ops` and `model.predict`, so it runs on any backend and
under any `tf.distribute` strategy (build it inside `strategy.scope()`):
each replica's batch counts as one batch, and `predict` gathers them from
every worker, so all workers write the same values.
"""

import keras
import numpy as np
from keras import ops


class BatchMoments(keras.layers.Layer):
    """One batch's per-channel mean and variance, as a [1, 2 * channels] row."""

    def __init__(self, axis, **kwargs):
        super().__init__(dtype="float32", **kwargs)  # float32 under mixed precision
        self.axis = axis

    def call(self, x):
        axis = self.axis % len(x.shape)
        mean, variance = ops.moments(x, [i for i in range(len(x.shape)) if i != axis])
        return ops.expand_dims(ops.concatenate([mean, variance]), 0)


class InTrainingMode(keras.Model):
    """Calls `inner` with `training=True` (BatchNorm on batch statistics)."""

    def __init__(self, inner, **kwargs):
        super().__init__(**kwargs)
        self.inner = inner

    def call(self, x, training=None):
        del training
        return self.inner(x, training=True)


def batch_norm_layers(model):
    """The BatchNorm layers of `model` that training updates.

    Frozen layers (`trainable=False`) keep their statistics, as in training.
    Only layers of `model`'s own graph are found: a nested model's are not.
    """
    layers = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    for layer in layers:
        if len(layer._inbound_nodes) != 1:
            raise ValueError(
                f"PreciseBN: BatchNorm layer {layer.name!r} is called "
                f"{len(layer._inbound_nodes)} times; only layers called once "
                "are supported"
            )
        if getattr(layer, "renorm", False):  # Keras >= 3.14 has renorm
            raise ValueError(
                f"PreciseBN: BatchNorm layer {layer.name!r} uses renorm, "
                "which keeps other statistics; it is not supported"
            )
    return layers


def pool(rows, channels):
    """Population mean and variance from per-batch [mean, variance] rows."""
    rows = np.asarray(rows, dtype=np.float64)
    means, variances = rows[:, :channels], rows[:, channels:]
    return means.mean(axis=0), variances.mean(axis=0) + means.var(axis=0)


class PreciseBN(keras.callbacks.Callback):
    """Recomputes BatchNorm statistics before every evaluation.

    Args:
      model: a functional Keras model (its BatchNorm layers are found in
        `model.layers`).
      data: what `model.predict` takes: batches of training images (with
        or without labels), at least `steps` of them.
      steps: batches to pool. Each pass starts a new iteration of `data`.

    Use as a callback of `fit` (it recomputes when an evaluation begins,
    validation included, and only when the weights changed since its last
    pass), or call `recompute()` directly.
    """

    def __init__(self, model, data, steps):
        super().__init__()
        if steps < 1:
            raise ValueError(f"PreciseBN: steps must be at least 1, got {steps}")
        self.layers = batch_norm_layers(model)
        if not self.layers:
            raise ValueError(f"PreciseBN: model {model.name!r} has no trainable BatchNorm layer")
        self.data, self.steps = data, steps
        self._statistics = InTrainingMode(
            keras.Model(
                model.inputs, [BatchMoments(layer.axis)(layer.input) for layer in self.layers]
            )
        )
        self._done_at = None

    def recompute(self):
        """Writes every layer's pooled statistics into its moving averages."""
        rows = self._statistics.predict(self.data, steps=self.steps, verbose=0)
        if len(self.layers) == 1:
            rows = [rows]
        for layer, layer_rows in zip(self.layers, rows):
            mean, variance = pool(layer_rows, layer.moving_mean.shape[0])
            layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype))
            layer.moving_variance.assign(variance.astype(layer.moving_variance.dtype))

    def on_test_begin(self, logs=None):
        model = self.model
        step = (
            int(ops.convert_to_numpy(model.optimizer.iterations))
            if model is not None and model.optimizer is not None
            else None
        )
        if step is None or step != self._done_at:
            self.recompute()
            self._done_at = step


__all__ = ["PreciseBN"]
