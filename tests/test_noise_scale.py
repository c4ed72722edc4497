"""The gradient noise scale (tf_lars.noise_scale) against exact values.

Softmax regression on generated data: its per-example gradients are worked
out in float64 numpy, which gives the true |G|^2 and tr(Sigma) at the
model's (fixed) weights. Backend-neutral but for the tf_distribute test;
test_backends.py runs this suite under JAX too, and its known-answer test
under keras.distribution's DataParallel on two devices.
"""

import json
import os

import helpers
import keras
import numpy as np
import pytest

from tf_lars import noise_scale as ns

N, FEATURES, CLASSES, BATCH = 2048, 6, 3, 256
# After 200 measurements (decay 0.99) at fixed weights, 8 seeds of the probe
# batches came within 2.5% of the exact B_simple: 6% is the bound.
TOLERANCE, MEASUREMENTS = 0.06, 200


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, FEATURES)).astype("float32")
    logits = x @ rng.normal(size=(FEATURES, CLASSES)) + rng.gumbel(size=(N, CLASSES))
    return x, np.eye(CLASSES, dtype="float32")[np.argmax(logits, 1)]


def softmax_regression(optimizer=None):
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(CLASSES)])
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(0.0),  # rate 0: the weights stay
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    return model


def exact_terms(model, x, y):
    """(|G|^2, tr(Sigma)) of the mean cross-entropy, from per-example gradients."""
    kernel, bias = (np.asarray(w, np.float64) for w in model.get_weights())
    z = x @ kernel + bias
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    error = p - y  # d loss_i / d z_i
    per_example = np.concatenate(
        [(x[:, :, None] * error[:, None, :]).reshape(len(x), -1), error], 1
    )
    mean = per_example.mean(0)
    return float(mean @ mean), float(((per_example - mean) ** 2).sum(1).mean())


def probe(x, y, seed=10):
    """Batches drawn with replacement: E|G_B|^2 = |G|^2 + tr(Sigma)/B exactly."""
    rng = np.random.default_rng(seed)
    while True:
        rows = rng.integers(0, len(x), BATCH)
        yield x[rows], y[rows]


def assert_near_exact(result, model, x, y):
    gradient_sq, trace = exact_terms(model, x, y)
    assert result["gradient_sq"] == pytest.approx(gradient_sq, rel=TOLERANCE)
    assert result["trace"] == pytest.approx(trace, rel=TOLERANCE)
    assert result["b_simple"] == pytest.approx(trace / gradient_sq, rel=TOLERANCE)


def fit_with_noise_scale(model, x, y, micro_batches=4):
    callback = ns.NoiseScale(probe(x, y), micro_batches, every_steps=1, decay=0.99)
    model.fit(
        x, y, batch_size=8, epochs=1, steps_per_epoch=MEASUREMENTS, callbacks=[callback], verbose=0
    )
    assert callback.estimate.count == MEASUREMENTS
    assert [h["step"] for h in callback.history[:3]] == [1.0, 2.0, 3.0]
    return callback.result()


def test_the_unbiased_terms_of_hand_made_expectations():
    # |G|^2 = 2, tr(Sigma) = 30: E|G_10|^2 = 2 + 3 = 5, E|G_40|^2 = 2 + 0.75 = 2.75.
    assert ns.unbiased_terms(5.0, 2.75, 10, 40) == pytest.approx((2.0, 30.0))
    with pytest.raises(ValueError, match="B_small < B_big"):
        ns.unbiased_terms(5.0, 2.75, 40, 10)


def test_moving_averages_are_bias_corrected_and_their_ratio_is_b_simple():
    estimate = ns.NoiseScaleEstimate(decay=0.9)
    assert np.isnan(estimate.b_simple)
    estimate.update(5.0, 2.75, 10, 40)  # (2, 30)
    assert (estimate.gradient_sq, estimate.trace) == pytest.approx((2.0, 30.0))
    estimate.update(6.0, 3.5, 10, 40)  # (|G|^2, tr) = (2.666.., 33.333..)
    weights = np.array([0.9 * 0.1, 0.1]) / (1 - 0.81)  # older, newer
    assert estimate.gradient_sq == pytest.approx(weights @ [2.0, 8 / 3])
    assert estimate.trace == pytest.approx(weights @ [30.0, 100 / 3])
    assert estimate.b_simple == pytest.approx(estimate.trace / estimate.gradient_sq)


def test_the_estimate_in_fit_comes_within_tolerance_of_the_exact_one():
    x, y = data()
    model = softmax_regression()
    if os.environ.get("TF_LARS_TEST_DATA_PARALLEL"):  # (run by the JAX test below)
        import jax

        assert len(jax.devices()) == 2
        keras.distribution.set_distribution(keras.distribution.DataParallel())
        model = softmax_regression()
    if os.environ.get("TF_LARS_TEST_MIRRORED"):  # (run by the tf_distribute test below)
        import tensorflow as tf

        with tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"]).scope():
            model = softmax_regression()
    result = fit_with_noise_scale(model, x, y)
    assert_near_exact(result, model, x, y)


def test_two_micro_batches_and_eight_agree_with_the_exact_value():
    x, y = data()
    for parts in (2, 8):
        model = softmax_regression()
        assert_near_exact(fit_with_noise_scale(model, x, y, parts), model, x, y)


def test_a_loss_scale_changes_nothing():
    x, y = data()
    model = softmax_regression()
    gradients = ns.gradient_function(model, model.loss)
    plain = ns.squared_norms(gradients, x[:BATCH], y[:BATCH], 4)
    scaled = ns.squared_norms(gradients, x[:BATCH], y[:BATCH], 4, loss_scale=2.0**12)
    assert scaled == pytest.approx(plain, rel=1e-5)
    # In fit under a LossScaleOptimizer (its scale starts at 2^15) the same.
    scaled_model = softmax_regression(
        keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.0))
    )
    assert_near_exact(fit_with_noise_scale(scaled_model, x, y), scaled_model, x, y)


def test_the_model_state_is_left_as_it_was():
    """BatchNorm's moving averages: untouched by the measurements."""
    x, y = data()
    model = keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.BatchNormalization(), keras.layers.Dense(CLASSES)]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="categorical_crossentropy")
    callback = ns.NoiseScale(probe(x * 3 + 5, y), 2, every_steps=1)
    callback.set_model(model)
    callback.on_train_begin()
    before = [np.array(w) for w in model.get_weights()]
    callback.measure(*next(probe(x * 3 + 5, y)))
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_settings_that_cannot_estimate_are_refused():
    with pytest.raises(ValueError, match="`micro_batches` must be >= 2"):
        ns.NoiseScale([], micro_batches=1)
    with pytest.raises(ValueError, match="every_steps"):
        ns.NoiseScale([], every_steps=0)
    callback = ns.NoiseScale([], micro_batches=3)
    callback.set_model(softmax_regression())
    callback.on_train_begin()
    x, y = data()
    with pytest.raises(ValueError, match="does not cut into micro_batches=3"):
        callback.measure(x[:BATCH], y[:BATCH])


def test_tf_distribute_mirrored_two_replicas():
    """The known-answer test under MirroredStrategy, in a process of its own
    (strategies made earlier in a test process can collide in their
    collective ops' keys)."""
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "-k",
            "in_fit_comes_within",
            os.path.abspath(__file__),
        ],
        env=dict(os.environ, TF_LARS_TEST_MIRRORED="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout


def test_tensorboard_gets_the_smoothed_and_raw_values(tmp_path):
    pytest.importorskip("tensorflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x, y = data()
    model = softmax_regression()
    callback = ns.NoiseScale(probe(x, y), 4, every_steps=5, log_dir=str(tmp_path))
    model.fit(x, y, batch_size=8, epochs=1, steps_per_epoch=20, callbacks=[callback], verbose=0)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = set(events.Tags()["tensors"])
    assert tags == {
        f"noise_scale/{name}"
        for name in ("b_simple", "gradient_sq", "trace", "raw_gradient_sq", "raw_trace")
    }
    assert [e.step for e in events.Tensors("noise_scale/b_simple")] == [5, 10, 15, 20]


def test_the_trainer_logs_it_to_tensorboard_and_the_summary(tmp_path):
    """`--log_noise_scale` on either engine (this suite also runs under JAX)."""
    result = helpers.run_trainer(
        *helpers.TINY,
        "--epochs=3",
        "--log_every_steps=10",  # (the charts below keep their own cadence)
        "--log_noise_scale",
        "--noise_scale_every_steps=2",
        "--noise_scale_micro_batches=2",
        f"--model_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    noise = json.loads((tmp_path / "summary.json").read_text())["noise_scale"]
    # 12 steps, a measurement every 2: 6 rows, the last one's values the summary's.
    assert [row[0] for row in noise["curve"]] == [2, 4, 6, 8, 10, 12]
    assert noise["measurements"] == 6 and noise["micro_batches"] == 2
    assert noise["curve"][-1][1:] == [noise["b_simple"], noise["gradient_sq"], noise["trace"]]
    assert noise["trace"] > 0
    if keras.backend.backend() == "tensorflow":  # (event files need TensorFlow)
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(tmp_path / "train"), size_guidance={"tensors": 0})
        events.Reload()
        steps = [e.step for e in events.Tensors("noise_scale/raw_trace")]
        assert steps == [2, 4, 6, 8, 10, 12]
        # Keras's TensorBoard callback (--log_every_steps=10) does not thin
        # them, nor the learning rate, written at every step.
        assert [e.step for e in events.Tensors("learning_rate")] == list(range(1, 13))
