"""The gradient noise scale: how far a batch can grow before more images a
step stop buying more progress a step.

McCandlish, Kaplan, Amodei et al., "An Empirical Model of Large-Batch
Training" (arXiv:1812.06162), define the simple noise scale

    B_simple = tr(Sigma) / |G|^2

(`Sigma` the per-example gradients' covariance, `G` the true gradient) and
find the critical batch size near it. The squared norm of a gradient
averaged over `B` examples has the expectation `|G|^2 + tr(Sigma) / B`, so
two batch sizes give both terms without bias (their Appendix A):

    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

Each is smoothed by its own moving average before the ratio is taken.

`NoiseScale` is a Keras callback for `model.fit`: every `every_steps` steps
it splits one batch of its own input into `micro_batches` parts, takes each
part's gradient at the current weights (without touching the model's state:
`stateless_call`) and their mean, the batch's gradient. `B_small` is the
part's size and `B_big` the batch's. The gradients are taken per backend by
`gradient_function`; everything else is backend-free.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Optional

import keras
import numpy as np

GradientFn = Callable[[Any, Any, float], list[Any]]


def unbiased_terms(
    small_sq: float, big_sq: float, b_small: float, b_big: float
) -> tuple[float, float]:
    """`(|G|^2, tr(Sigma))` from the squared gradient norms at two batch sizes.

    Args:
        small_sq: |G_small|^2, the squared norm of a gradient over `b_small` examples.
        big_sq: |G_big|^2, the same over `b_big` examples.
        b_small, b_big: the two batch sizes, `0 < b_small < b_big`.
    """
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < B_small < B_big. Received: {b_small}, {b_big}")
    gradient_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
    return gradient_sq, trace


class NoiseScaleEstimate:
    """Moving averages of |G|^2 and tr(Sigma) and their ratio, B_simple.

    Args:
        decay: each average's decay per measurement, in [0, 1); bias-corrected
            as Adam's moments are, so the first measurements count in full.
    """

    def __init__(self, decay: float = 0.9) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"`decay` must be in [0, 1). Received: decay={decay}")
        self.decay = decay
        self.count = 0
        self._sums = [0.0, 0.0]

    def update(self, small_sq: float, big_sq: float, b_small: float, b_big: float) -> None:
        """Adds one measurement: mean |G_small|^2 over the parts, |G_big|^2."""
        terms = unbiased_terms(small_sq, big_sq, b_small, b_big)
        self.count += 1
        self._sums = [self.decay * s + (1 - self.decay) * t for s, t in zip(self._sums, terms)]

    def _average(self, i: int) -> float:
        if not self.count:
            return math.nan
        return self._sums[i] / (1 - self.decay**self.count)

    @property
    def gradient_sq(self) -> float:
        """The smoothed |G|^2 (nan before the first measurement)."""
        return self._average(0)

    @property
    def trace(self) -> float:
        """The smoothed tr(Sigma) (nan before the first measurement)."""
        return self._average(1)

    @property
    def b_simple(self) -> float:
        """tr(Sigma) / |G|^2, or nan while |G|^2 is not yet positive."""
        gradient_sq = self.gradient_sq
        return self.trace / gradient_sq if gradient_sq > 0 else math.nan


def squared_norms(
    gradients: GradientFn, x: Any, y: Any, micro_batches: int, loss_scale: float = 1.0
) -> tuple[float, float]:
    """`(mean |g_i|^2 over the parts, |mean g_i|^2)` of one batch cut into
    `micro_batches` equal parts, `g_i` each part's gradient.

    Args:
        gradients: `f(x, y, scale)` (see `gradient_function`).
        x, y: the batch; its length a multiple of `micro_batches`.
        micro_batches: the parts, >= 2.
        loss_scale: multiplies the loss before differentiation (mixed
            precision keeps small float16 gradients from vanishing so); the
            norms are given back unscaled.
    """
    size = len(x)
    part = size // micro_batches
    total: Optional[list[np.ndarray]] = None
    small = 0.0
    for i in range(micro_batches):
        chunk = slice(i * part, (i + 1) * part)
        grads = [
            np.asarray(keras.ops.convert_to_numpy(g), np.float64) / loss_scale
            for g in gradients(x[chunk], y[chunk], loss_scale)
        ]
        small += sum(float(np.sum(g * g)) for g in grads)
        total = grads if total is None else [t + g for t, g in zip(total, grads)]
    assert total is not None
    big = sum(float(np.sum((t / micro_batches) ** 2)) for t in total)
    return small / micro_batches, big


def gradient_function(model: Any, loss: Any) -> GradientFn:
    """`f(x, y, scale)`: the gradients of `scale * mean(loss(y, model(x)))` with
    respect to `model.trainable_variables`, at their current values, with
    the model in training mode but its state (BatchNorm's moving averages)
    left as it is. One function per Keras backend."""
    backend = keras.backend.backend()
    makers = {"tensorflow": _tensorflow_gradients, "jax": _jax_gradients}
    if backend not in makers:
        raise ValueError(
            f"the gradient noise scale needs the tensorflow or jax backend. "
            f"Received: KERAS_BACKEND={backend}"
        )
    return makers[backend](model, loss)


def _tensorflow_gradients(model: Any, loss: Any) -> GradientFn:
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def grads(x: Any, y: Any, scale: Any) -> Any:
        trainable = [tf.identity(v.value) for v in model.trainable_variables]
        frozen = [v.value for v in model.non_trainable_variables]
        with tf.GradientTape() as tape:
            tape.watch(trainable)
            y_pred, _ = model.stateless_call(trainable, frozen, x, training=True)
            value = tf.reduce_mean(tf.cast(loss(y, y_pred), tf.float32)) * scale
        return tape.gradient(value, trainable)

    return lambda x, y, scale: grads(x, y, tf.constant(scale, tf.float32))


def _jax_gradients(model: Any, loss: Any) -> GradientFn:
    import jax

    def scaled_loss(trainable: Any, frozen: Any, x: Any, y: Any, scale: Any) -> Any:
        y_pred, _ = model.stateless_call(trainable, frozen, x, training=True)
        return loss(y, y_pred).astype("float32").mean() * scale

    grads = jax.jit(jax.grad(scaled_loss))

    def call(x: Any, y: Any, scale: float) -> Any:
        trainable = [v.value for v in model.trainable_variables]
        frozen = [v.value for v in model.non_trainable_variables]
        return grads(trainable, frozen, x, y, scale)

    return call


def _current_loss_scale(optimizer: Any) -> float:
    """A `LossScaleOptimizer`'s current scale, else 1."""
    scale = getattr(optimizer, "dynamic_scale", None)
    return float(keras.ops.convert_to_numpy(scale)) if scale is not None else 1.0


class NoiseScale(keras.callbacks.Callback):
    """Measures the gradient noise scale B_simple while `model.fit` trains.

    Every `every_steps` optimizer steps: the next batch of `batches` cut into
    `micro_batches` parts (see the module's docstring). The latest values are
    in `result()`; with `log_dir`, TensorBoard gets `noise_scale/b_simple`,
    `noise_scale/gradient_sq` and `noise_scale/trace` (smoothed) and
    `noise_scale/raw_gradient_sq`, `noise_scale/raw_trace` (this
    measurement's), at the optimizer's step.

    Args:
        batches: an iterable of `(images, labels)` batches, as numpy arrays or
            tensors, of the batch size whose noise scale is wanted (the
            training batch); cycled through when it ends.
        micro_batches: parts per batch, >= 2, dividing the batch.
        every_steps: steps between measurements, >= 1.
        decay: the moving averages' decay per measurement.
        log_dir: where to write TensorBoard scalars (needs TensorFlow), or None.
        loss: the loss to differentiate; default: the compiled `model.loss`.

    Reference: McCandlish et al. 2018, https://arxiv.org/abs/1812.06162.
    """

    def __init__(
        self,
        batches: Iterable[Any],
        micro_batches: int = 4,
        every_steps: int = 100,
        decay: float = 0.9,
        log_dir: Optional[str] = None,
        loss: Any = None,
    ) -> None:
        super().__init__()
        if micro_batches < 2:
            raise ValueError(
                "the noise scale needs two batch sizes: `micro_batches` must be >= 2. "
                f"Received: micro_batches={micro_batches}"
            )
        if every_steps < 1:
            raise ValueError(f"`every_steps` must be >= 1. Received: every_steps={every_steps}")
        self.batches, self.micro_batches, self.every_steps = batches, micro_batches, every_steps
        self.estimate = NoiseScaleEstimate(decay)
        self.log_dir, self.loss = log_dir, loss
        self.history: list[dict[str, float]] = []
        self._iterator: Optional[Iterator[Any]] = None
        self._gradients: Optional[GradientFn] = None
        self._writer: Any = None
        self._last_step = 0

    def on_train_begin(self, logs: Any = None) -> None:
        self._last_step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if self._gradients is None:  # (once: a run may call fit again)
            loss = self.loss or keras.losses.get(self.model.loss)
            self._gradients = gradient_function(self.model, loss)
        if self.log_dir:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(self.log_dir)

    def _next_batch(self) -> tuple[Any, Any]:
        if self._iterator is not None:
            batch = next(self._iterator, None)
            if batch is not None:
                return batch[0], batch[1]
        self._iterator = iter(self.batches)
        batch = next(self._iterator)
        return batch[0], batch[1]

    def measure(self, x: Any, y: Any) -> dict[str, float]:
        """One measurement on the batch `(x, y)`; what it found, raw and smoothed."""
        if len(x) % self.micro_batches:
            raise ValueError(
                f"a batch of {len(x)} does not cut into micro_batches={self.micro_batches} parts"
            )
        assert self._gradients is not None, "measure() runs once training has begun"
        scale = _current_loss_scale(self.model.optimizer)
        small_sq, big_sq = squared_norms(self._gradients, x, y, self.micro_batches, scale)
        b_big = float(len(x))
        b_small = b_big / self.micro_batches
        raw_gradient_sq, raw_trace = unbiased_terms(small_sq, big_sq, b_small, b_big)
        self.estimate.update(small_sq, big_sq, b_small, b_big)
        return dict(
            raw_gradient_sq=raw_gradient_sq,
            raw_trace=raw_trace,
            gradient_sq=self.estimate.gradient_sq,
            trace=self.estimate.trace,
            b_simple=self.estimate.b_simple,
        )

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        # (Counted from the last measurement: with steps_per_execution > 1
        # this runs every few steps.)
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if step - self._last_step < self.every_steps:
            return
        self._last_step = step
        found = self.measure(*self._next_batch())
        self.history.append(dict(step=float(step), **found))
        if self._writer is not None:
            import tensorflow as tf

            # (Keras's TensorBoard callback records only every `update_freq`
            # steps while it trains; these are measured seldom: always kept.)
            with self._writer.as_default(step=step), tf.summary.record_if(True):
                for name, value in found.items():
                    if math.isfinite(value):
                        tf.summary.scalar(f"noise_scale/{name}", value)

    def on_train_end(self, logs: Any = None) -> None:
        if self._writer is not None:
            self._writer.close()

    def result(self) -> dict[str, float]:
        """The latest smoothed values and the number of measurements."""
        return dict(
            b_simple=self.estimate.b_simple,
            gradient_sq=self.estimate.gradient_sq,
            trace=self.estimate.trace,
            measurements=float(self.estimate.count),
        )


__all__ = [
    "NoiseScale",
    "NoiseScaleEstimate",
    "unbiased_terms",
    "squared_norms",
    "gradient_function",
]
