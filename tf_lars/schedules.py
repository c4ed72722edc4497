"""Learning-rate schedules of the large-batch recipe.

All are `keras.optimizers.schedules.LearningRateSchedule`s evaluated at the
optimizer's iteration (0 for the first update), serializable, written with
`keras.ops` so they run on every Keras backend, and constant once the step
passes the end.

* `WarmupPolynomialDecay`: the paper's schedule (linear warmup, then
  polynomial decay with power 2 to an end rate at the last step).
* `warmup_cosine_decay`: linear warmup then cosine decay; Keras's own
  `CosineDecay` already does this, so it is returned as is.
* `WarmupPiecewiseConstant`: linear warmup then step decay (Goyal et al.).
* `linear_scaling`: the linear scaling rule for the peak rate.
"""

from collections.abc import Sequence
from typing import Any, Optional

import keras
from keras import ops


def linear_scaling(
    base_learning_rate: float, batch_size: int, base_batch_size: int = 256
) -> float:
    """The linear scaling rule: `base_lr * batch_size / base_batch_size`.

    Goyal et al., "Accurate, Large Minibatch SGD", arXiv:1706.02677: when
    the batch grows k times, so does the rate (reference batch 256).

    Args:
        base_learning_rate: the rate that suits `base_batch_size`.
        batch_size: the global batch the rate is wanted for.
        base_batch_size: the batch `base_learning_rate` was tuned at. Defaults to 256.
    """
    if batch_size <= 0 or base_batch_size <= 0:
        raise ValueError(
            "Batch sizes must be positive. Received: "
            f"batch_size={batch_size}, base_batch_size={base_batch_size}"
        )
    return float(base_learning_rate) * batch_size / base_batch_size


def _check_steps(warmup_steps: int, total_steps: Optional[int] = None) -> None:
    if warmup_steps < 0:
        raise ValueError(f"`warmup_steps` must be >= 0. Received: warmup_steps={warmup_steps}")
    if total_steps is not None and total_steps <= warmup_steps:
        raise ValueError(
            "`total_steps` must be larger than `warmup_steps`. Received: "
            f"total_steps={total_steps}, warmup_steps={warmup_steps}"
        )


def _warmup(step: Any, warmup_steps: int, initial: float, target: Any) -> Any:
    """Linear ramp from `initial` at step 0 to `target` at `warmup_steps`."""
    fraction = step / ops.maximum(ops.cast(warmup_steps, step.dtype), 1.0)
    return initial + (target - initial) * fraction


@keras.saving.register_keras_serializable(package="tf_lars")
class WarmupPolynomialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup, then polynomial decay (You et al., arXiv:1709.05011).

    ```python
    if step < warmup_steps:
        lr = initial + (peak - initial) * step / warmup_steps
    else:
        t = min(step, total_steps) - warmup_steps
        lr = end + (peak - end) * (1 - t / (total_steps - warmup_steps)) ** power
    ```

    Args:
        peak_learning_rate: the rate at the end of warmup.
        total_steps: the step at which the rate reaches `end_learning_rate`.
        warmup_steps: steps of linear warmup. Defaults to 0.
        power: the decay's power; the paper uses 2. Defaults to 2.0.
        initial_learning_rate: the rate at step 0. Defaults to 0.0.
        end_learning_rate: the rate from `total_steps` on. Defaults to 0.0.
        name: the schedule's name in its config. Defaults to "WarmupPolynomialDecay".
    """

    def __init__(
        self,
        peak_learning_rate: float,
        total_steps: int,
        warmup_steps: int = 0,
        power: float = 2.0,
        initial_learning_rate: float = 0.0,
        end_learning_rate: float = 0.0,
        name: str = "WarmupPolynomialDecay",
    ) -> None:
        _check_steps(warmup_steps, total_steps)
        self.peak_learning_rate = float(peak_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.power = float(power)
        self.initial_learning_rate = float(initial_learning_rate)
        self.end_learning_rate = float(end_learning_rate)
        self.name = name

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        warm = _warmup(
            step,
            self.warmup_steps,
            self.initial_learning_rate,
            self.peak_learning_rate,
        )
        t = ops.minimum(step, float(self.total_steps)) - self.warmup_steps
        remaining = 1.0 - t / float(self.total_steps - self.warmup_steps)
        decayed = self.end_learning_rate + (
            self.peak_learning_rate - self.end_learning_rate
        ) * ops.power(ops.maximum(remaining, 0.0), self.power)
        return ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "power": self.power,
            "initial_learning_rate": self.initial_learning_rate,
            "end_learning_rate": self.end_learning_rate,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="tf_lars")
class WarmupPiecewiseConstant(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to `values[0]`, then piecewise-constant (step) decay.

    The rate is `values[i]` for `boundaries[i-1] <= step < boundaries[i]`
    (boundaries count from step 0, as in Goyal et al.'s epochs 30, 60, 80).
    During warmup the rate ramps from `initial_learning_rate` to `values[0]`.

    Args:
        boundaries: increasing steps at which the rate changes, none before
            the end of warmup.
        values: the rates, one more than `boundaries`.
        warmup_steps: steps of linear warmup. Defaults to 0.
        initial_learning_rate: the rate at step 0. Defaults to 0.0.
        name: the schedule's name in its config. Defaults to "WarmupPiecewiseConstant".
    """

    def __init__(
        self,
        boundaries: Sequence[int],
        values: Sequence[float],
        warmup_steps: int = 0,
        initial_learning_rate: float = 0.0,
        name: str = "WarmupPiecewiseConstant",
    ) -> None:
        _check_steps(warmup_steps)
        boundaries = [int(b) for b in boundaries]
        values = [float(v) for v in values]
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                "`values` must have one more entry than `boundaries`. "
                f"Received: boundaries={boundaries}, values={values}"
            )
        if boundaries != sorted(boundaries) or (boundaries and boundaries[0] < warmup_steps):
            raise ValueError(
                "`boundaries` must be increasing and not before the end of "
                f"warmup. Received: boundaries={boundaries}, "
                f"warmup_steps={warmup_steps}"
            )
        self.boundaries = boundaries
        self.values = values
        self.warmup_steps = int(warmup_steps)
        self.initial_learning_rate = float(initial_learning_rate)
        self.name = name

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        rate = ops.full((), self.values[0], "float32")
        for boundary, value in zip(self.boundaries, self.values[1:]):
            rate = ops.where(step >= boundary, value, rate)
        warm = _warmup(step, self.warmup_steps, self.initial_learning_rate, self.values[0])
        return ops.where(step < self.warmup_steps, warm, rate)

    def get_config(self) -> dict[str, Any]:
        return {
            "boundaries": self.boundaries,
            "values": self.values,
            "warmup_steps": self.warmup_steps,
            "initial_learning_rate": self.initial_learning_rate,
            "name": self.name,
        }


def warmup_cosine_decay(
    peak_learning_rate: float,
    total_steps: int,
    warmup_steps: int = 0,
    initial_learning_rate: float = 0.0,
    end_learning_rate: float = 0.0,
) -> Any:
    """Linear warmup to the peak, then cosine decay to the end rate.

    Keras's `CosineDecay` implements exactly this (its `warmup_target` is the
    peak), so this returns one, with arguments named as in this module.

    Args:
        peak_learning_rate: the rate at the end of warmup, > 0.
        total_steps: the step at which the rate reaches `end_learning_rate`.
        warmup_steps: steps of linear warmup. Defaults to 0.
        initial_learning_rate: the rate at step 0. Defaults to 0.0.
        end_learning_rate: the rate at `total_steps`. Defaults to 0.0.
    """
    _check_steps(warmup_steps, total_steps)
    peak = float(peak_learning_rate)
    if peak <= 0:
        raise ValueError(
            f"`peak_learning_rate` must be > 0. Received: peak_learning_rate={peak_learning_rate}"
        )
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=float(initial_learning_rate),
        decay_steps=int(total_steps - warmup_steps),
        alpha=float(end_learning_rate) / peak,
        warmup_target=peak,
        warmup_steps=int(warmup_steps),
    )


__all__ = [
    "linear_scaling",
    "WarmupPolynomialDecay",
    "WarmupPiecewiseConstant",
    "warmup_cosine_decay",
]
