"""Schedules against [[step, lr], ...] tables worked out by hand."""

import keras
import numpy as np
import pytest

from tf_lars import schedules


def check_table(schedule, table):
    for step, want in table:
        got = float(keras.ops.convert_to_numpy(schedule(step)))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9, err_msg=f"step {step}")
    clone = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert type(clone) is type(schedule)
    assert clone.get_config() == schedule.get_config()


@pytest.mark.parametrize(
    "kwargs,table",
    [
        # Paper: warmup 0 -> 2 over 4 steps, then 2 * (1 - t/16)^2 over 16 steps.
        (
            dict(peak_learning_rate=2.0, total_steps=20, warmup_steps=4),
            [
                [0, 0.0],
                [1, 0.5],
                [3, 1.5],
                [4, 2.0],
                [8, 2.0 * 0.75**2],
                [12, 0.5],
                [20, 0.0],
                [25, 0.0],
                [1000, 0.0],
            ],
        ),
        # From an initial rate, to an end rate, power 1.
        (
            dict(
                peak_learning_rate=1.0,
                total_steps=12,
                warmup_steps=2,
                power=1.0,
                initial_learning_rate=0.2,
                end_learning_rate=0.1,
            ),
            [[0, 0.2], [1, 0.6], [2, 1.0], [7, 0.55], [12, 0.1], [40, 0.1]],
        ),
        # No warmup.
        (
            dict(peak_learning_rate=3.0, total_steps=10),
            [[0, 3.0], [5, 0.75], [10, 0.0], [11, 0.0]],
        ),
    ],
)
def test_warmup_polynomial_decay(kwargs, table):
    check_table(schedules.WarmupPolynomialDecay(**kwargs), table)


def test_warmup_piecewise_constant():
    schedule = schedules.WarmupPiecewiseConstant(
        boundaries=[10, 20], values=[0.4, 0.04, 0.004], warmup_steps=4
    )
    check_table(
        schedule,
        [
            [0, 0.0],
            [2, 0.2],
            [4, 0.4],
            [9, 0.4],
            [10, 0.04],
            [19, 0.04],
            [20, 0.004],
            [500, 0.004],
        ],
    )


def test_warmup_cosine_decay():
    schedule = schedules.warmup_cosine_decay(
        peak_learning_rate=1.0, total_steps=12, warmup_steps=2, end_learning_rate=0.1
    )
    # After warmup: 0.1 + 0.9 * (1 + cos(pi * t / 10)) / 2.
    check_table(schedule, [[0, 0.0], [1, 0.5], [2, 1.0], [7, 0.55], [12, 0.1], [30, 0.1]])


def test_linear_scaling_rule():
    assert schedules.linear_scaling(0.1, 8192) == pytest.approx(3.2)  # Goyal et al.
    assert schedules.linear_scaling(0.1, 128, base_batch_size=256) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="batch_size=0"):
        schedules.linear_scaling(0.1, 0)


@pytest.mark.parametrize(
    "make,message",
    [
        (
            lambda: schedules.WarmupPolynomialDecay(1.0, total_steps=5, warmup_steps=5),
            "total_steps=5, warmup_steps=5",
        ),
        (
            lambda: schedules.WarmupPolynomialDecay(1.0, total_steps=5, warmup_steps=-1),
            "warmup_steps=-1",
        ),
        (lambda: schedules.WarmupPiecewiseConstant([5], [1.0]), "one more entry"),
        (lambda: schedules.WarmupPiecewiseConstant([5, 3], [1.0, 0.1, 0.01]), "increasing"),
        (lambda: schedules.warmup_cosine_decay(0.0, total_steps=5), "peak_learning_rate=0.0"),
    ],
)
def test_bad_arguments_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


if __name__ == "__main__":  # Bazel's py_test runs the file itself.
    raise SystemExit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))


class OneStepAtATime(keras.optimizers.schedules.LearningRateSchedule):
    """0.1 until step 5, then 0.01: a Python branch, so one step at a time."""

    def __call__(self, step):
        return 0.1 if int(keras.ops.convert_to_numpy(step)) < 5 else 0.01


@pytest.mark.parametrize(
    "rate,table",
    [
        # The paper's schedule, taken on all the steps at once.
        (
            schedules.WarmupPolynomialDecay(
                peak_learning_rate=2.0, total_steps=20, warmup_steps=4
            ),
            [[1, 0.5], [3, 1.5], [4, 2.0], [8, 2.0 * 0.75**2], [12, 0.5], [20, 0.0]],
        ),
        (OneStepAtATime(), [[3, 0.1], [4, 0.1], [5, 0.01], [9, 0.01]]),
        (0.25, [[1, 0.25], [7, 0.25]]),
    ],
)
def test_the_monitor_gets_the_learning_rate_of_each_step_it_writes(rate, table):
    from tf_lars.monitoring import learning_rates

    optimizer = keras.optimizers.SGD(learning_rate=rate)
    steps, want = zip(*table)
    np.testing.assert_allclose(learning_rates(optimizer, list(steps)), want, rtol=1e-6, atol=1e-9)
    assert learning_rates(optimizer, []) == []
