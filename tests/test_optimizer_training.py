"""LARS inside the ways Keras users train: fit, custom loops, XLA, mixed
precision, gradient accumulation, tf.distribute and checkpoints."""

import os

import helpers
import keras
import numpy as np
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("tf.distribute and tf.train tests need the TF backend", allow_module_level=True)

import tensorflow as tf  # noqa: E402
from test_optimizer import numpy_lars  # noqa: E402

import tf_lars  # noqa: E402
from tf_lars import LARS  # noqa: E402

HP = dict(learning_rate=0.5, momentum=0.9, weight_decay=1e-3, trust_coefficient=0.02)


def make_model(batch_norm=False, seed=0):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="conv")]
    if batch_norm:
        layers.append(keras.layers.BatchNormalization(name="bn"))
    layers += [
        keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(5, name="head"),
    ]
    return keras.Sequential(layers, name="net")


def data(n=64, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 5, size=n)
    return x, y


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def fit(model, opt, x, y, batch_size, epochs=1, **compile_kw):
    model.compile(optimizer=opt, loss=LOSS, **compile_kw)
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
    return [v.numpy() for v in model.trainable_variables]


def assert_weights_close(got, want, atol=1e-5, rtol=1e-5):
    helpers.assert_weights_close(got, want, rtol=rtol, atol=atol)


def test_fit_matches_tape_gradients_with_numpy_update():
    x, y = data()
    model = make_model()
    initial = [v.numpy() for v in model.trainable_variables]
    got = fit(model, LARS(**HP), x, y, batch_size=16)

    # Reference: same gradients from a tape, the update done by numpy_lars.
    ref = make_model()
    weights = [w.astype(np.float64) for w in initial]
    velocities = [np.zeros_like(w) for w in weights]
    for start in range(0, 64, 16):
        for v, w in zip(ref.trainable_variables, weights):
            v.assign(w.astype(np.float32))
        with tf.GradientTape() as tape:
            loss = LOSS(y[start : start + 16], ref(x[start : start + 16], training=True))
        grads = tape.gradient(loss, ref.trainable_variables)
        for i, (w, g) in enumerate(zip(weights, grads)):
            rank2 = w.ndim > 1
            # One momentum step from the stored velocity: numpy_lars starts
            # from v = 0, so replay it with v folded in by hand.
            d = g.numpy() + (HP["weight_decay"] * w if rank2 else 0)
            r = 1.0
            if rank2:
                wn, gn = np.linalg.norm(w), np.linalg.norm(g.numpy())
                r = HP["trust_coefficient"] * wn / (gn + HP["weight_decay"] * wn)
            velocities[i] = HP["momentum"] * velocities[i] + HP["learning_rate"] * r * d
            weights[i] = w - velocities[i]
    assert_weights_close(got, weights)
    assert np.abs(got[0] - initial[0]).max() > 1e-3


def test_custom_loop_apply_gradients_matches_numpy_reference():
    model = make_model()
    x, y = data(16)
    opt = LARS(**HP)
    kernel0 = model.get_layer("conv").kernel.numpy()
    grads_seen = []

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            loss = LOSS(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return grads[0]

    for _ in range(3):
        grads_seen.append(train_step().numpy())
    # The conv kernel's gradient at each step was returned: replay the rule.
    want = numpy_lars(
        kernel0,
        grads_seen,
        HP["learning_rate"],
        momentum=0.9,
        wd=HP["weight_decay"],
        eta=HP["trust_coefficient"],
    )
    np.testing.assert_allclose(model.get_layer("conv").kernel.numpy(), want, rtol=1e-5, atol=1e-6)


def test_jit_compile_matches_eager_graph():
    x, y = data()
    plain = fit(make_model(), LARS(**HP), x, y, 16, epochs=2, jit_compile=False)
    xla = fit(make_model(), LARS(**HP), x, y, 16, epochs=2, jit_compile=True)
    assert_weights_close(xla, plain)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_sees_unscaled_gradients(policy):
    x, y = data()
    initial = make_model().get_weights()
    reference = fit(make_model(), LARS(**HP), x, y, 16)
    keras.config.set_dtype_policy(policy)
    model = make_model()
    model.set_weights(initial)
    model.compile(optimizer=LARS(**HP), loss=LOSS)
    if policy == "mixed_float16":  # Keras wraps the optimizer to scale the loss.
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert isinstance(model.optimizer.inner_optimizer, LARS)
    model.fit(x, y, batch_size=16, shuffle=False, verbose=0)
    got = [v.numpy() for v in model.trainable_variables]
    # A scaled gradient (x 32768) in the ratio would shrink the kernel steps
    # ~1e4-fold; half precision only perturbs them by a few percent.
    for g, want, w0 in zip(got, reference, initial):
        step_want, step_got = want - w0, g - w0
        assert np.linalg.norm(step_got - step_want) < 0.1 * np.linalg.norm(step_want)


def test_gradient_accumulation_equals_larger_batch():
    x, y = data()
    big = fit(make_model(), LARS(**HP), x, y, batch_size=32, epochs=2)
    accumulated = fit(
        make_model(), LARS(gradient_accumulation_steps=4, **HP), x, y, batch_size=8, epochs=2
    )
    assert_weights_close(accumulated, big)


def test_mirrored_strategy_matches_one_device():
    x, y = data()
    one = fit(make_model(), LARS(**HP), x, y, batch_size=32, epochs=3)
    strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model, opt = make_model(), LARS(track_trust_ratios=True, **HP)
    two = fit(model, opt, x, y, batch_size=32, epochs=3)
    assert_weights_close(two, one)
    assert set(opt.trust_ratio_stats()) == {"net/conv/kernel", "net/head/kernel"}


def run_epochs(model, x, y, epochs):
    model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0)


def compiled_model():
    model = make_model(batch_norm=True)
    schedule = tf_lars.schedules.WarmupPolynomialDecay(0.5, total_steps=12, warmup_steps=3)
    model.compile(
        optimizer=LARS(
            learning_rate=schedule, momentum=0.9, weight_decay=1e-3, trust_coefficient=0.02
        ),
        loss=LOSS,
    )
    return model


def uninterrupted_and_first_epoch():
    """A 3-epoch run, and a run stopped after its first epoch."""
    x, y = data()
    straight, first = compiled_model(), compiled_model()
    run_epochs(straight, x, y, 3)
    run_epochs(first, x, y, 1)
    return x, y, straight, first


def test_keras_file_resume_equals_uninterrupted(tmp_path):
    x, y, straight, first = uninterrupted_and_first_epoch()
    path = os.path.join(tmp_path, "mid.keras")
    first.save(path)
    resumed = keras.models.load_model(path)
    assert isinstance(resumed.optimizer, LARS)
    assert int(resumed.optimizer.iterations.numpy()) == 4
    run_epochs(resumed, x, y, 2)
    assert_weights_close(resumed.get_weights(), straight.get_weights())


def test_tf_checkpoint_resume_equals_uninterrupted(tmp_path):
    x, y, straight, first = uninterrupted_and_first_epoch()
    path = tf.train.Checkpoint(model=first, optimizer=first.optimizer).save(
        os.path.join(tmp_path, "ckpt")
    )
    resumed = compiled_model()
    resumed.optimizer.build(resumed.trainable_variables)
    tf.train.Checkpoint(model=resumed, optimizer=resumed.optimizer).restore(
        path
    ).assert_existing_objects_matched()
    assert int(resumed.optimizer.iterations.numpy()) == 4
    run_epochs(resumed, x, y, 2)
    assert_weights_close(resumed.get_weights(), straight.get_weights())


def test_lars_trains_a_convnet_on_fashion_mnist(fashion_mnist):
    images, labels = fashion_mnist.load("train")
    test_images, test_labels = fashion_mnist.load("test")
    x = images[:8192, :, :, None].astype(np.float32) / 255.0
    y = labels[:8192]
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
            keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    steps = 5 * 8192 // 256
    schedule = tf_lars.schedules.WarmupPolynomialDecay(
        1.0, total_steps=steps, warmup_steps=steps // 6
    )
    model.compile(
        optimizer=LARS(learning_rate=schedule, weight_decay=1e-4, trust_coefficient=0.01),
        loss=LOSS,
        metrics=["accuracy"],
    )
    model.fit(x, y, batch_size=256, epochs=5, verbose=0)
    _, accuracy = model.evaluate(
        test_images[:2000, :, :, None] / 255.0, test_labels[:2000], verbose=0
    )
    assert accuracy > 0.7, f"test accuracy {accuracy:.3f} (chance is 0.1)"


if __name__ == "__main__":  # Bazel's py_test runs the file itself.
    raise SystemExit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
