"""PreciseBN against statistics computed with numpy alone.

Backend-neutral (numpy data, no tf.data), so test_backends.py runs it again
under JAX; the MirroredStrategy test runs under TensorFlow only.
"""

import keras
import numpy as np
import pytest

from tf_lars.training import precise_bn

EPS = 1e-3  # Keras's BatchNormalization default


class Batches(keras.utils.PyDataset):
    """Given batches, in order."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return self.batches[i]


def two_bn_model(units=(6, 4), features=5):
    inputs = keras.Input((features,))
    x = keras.layers.Dense(units[0], name="d1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Dense(units[1], name="d2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def reference(model, x, batch):
    """Population mean/var of each BN input, batch statistics upstream (numpy)."""
    w1, b1 = model.get_layer("d1").get_weights()
    g1, beta1, _, _ = model.get_layer("bn1").get_weights()
    w2, b2 = model.get_layer("d2").get_weights()
    h1s, h2s = [], []
    for start in range(0, len(x), batch):
        h1 = x[start : start + batch].astype(np.float64) @ w1 + b1
        n1 = (h1 - h1.mean(0)) / np.sqrt(h1.var(0) + EPS) * g1 + beta1
        h2 = np.maximum(n1, 0) @ w2 + b2
        h1s.append(h1)
        h2s.append(h2)
    return [(np.concatenate(h).mean(0), np.concatenate(h).var(0)) for h in (h1s, h2s)]


@pytest.mark.parametrize("policy,tolerance", [("float32", 1e-4), ("mixed_bfloat16", 3e-2)])
def test_recompute_matches_numpy_population_statistics(policy, tolerance):
    keras.config.set_dtype_policy(policy)
    rng = np.random.default_rng(0)
    model = two_bn_model()
    # Non-trivial gamma/beta, so the second layer's input depends on them.
    bn1 = model.get_layer("bn1")
    bn1.gamma.assign(rng.uniform(0.5, 2.0, 6).astype("float32"))
    bn1.beta.assign(rng.normal(size=6).astype("float32"))
    x = (rng.normal(size=(96, 5)) * [1, 2, 3, 4, 5] + [5, -3, 0, 1, 2]).astype("float32")
    batches = [x[i : i + 24] for i in range(0, 96, 24)]
    callback = precise_bn.PreciseBN(model, Batches(batches), steps=4)
    callback.recompute()
    for name, (mean, var) in zip(("bn1", "bn2"), reference(model, x, 24)):
        layer = model.get_layer(name)
        assert layer.moving_mean.dtype == "float32"
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(layer.moving_mean), mean, rtol=tolerance, atol=tolerance
        )
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(layer.moving_variance), var, rtol=tolerance, atol=tolerance
        )


def test_pool_is_the_law_of_total_variance():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(4, 50, 3)) * 2 + rng.normal(size=(4, 1, 3))
    rows = np.concatenate([data.mean(1), data.var(1)], axis=1)
    mean, var = precise_bn.pool(rows, 3)
    np.testing.assert_allclose(mean, data.reshape(-1, 3).mean(0), rtol=1e-12)
    np.testing.assert_allclose(var, data.reshape(-1, 3).var(0), rtol=1e-12)


def test_callback_recomputes_before_validation_and_only_after_training():
    model = two_bn_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(64, 5)) * 3 + 4).astype("float32")
    y = rng.normal(size=(64, 3)).astype("float32")
    callback = precise_bn.PreciseBN(model, Batches([x[:32], x[32:]]), steps=2)
    model.fit(
        x, y, batch_size=32, epochs=1, validation_data=(x, y), callbacks=[callback], verbose=0
    )
    mean, var = reference(model, x, 32)[1]
    # Pooled at the end of the epoch, with the trained weights (momentum 0.99
    # over 2 steps would have left the moving mean near 0).
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.get_layer("bn2").moving_mean), mean, rtol=1e-4, atol=1e-4
    )
    # Not again while the weights stay the same.
    model.get_layer("bn2").moving_mean.assign(np.full(4, 7.0, "float32"))
    model.evaluate(x, y, callbacks=[callback], verbose=0)
    assert np.all(keras.ops.convert_to_numpy(model.get_layer("bn2").moving_mean) == 7.0)


def test_frozen_and_missing_batch_norm():
    model = two_bn_model()
    model.get_layer("bn1").trainable = False
    assert [layer.name for layer in precise_bn.batch_norm_layers(model)] == ["bn2"]
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no trainable BatchNorm"):
        precise_bn.PreciseBN(plain, np.zeros((4, 3), "float32"), steps=1)
    shared_bn = keras.layers.BatchNormalization(name="shared")
    inputs = keras.Input((3,))
    twice = keras.Model(inputs, shared_bn(keras.layers.Dense(3)(shared_bn(inputs))))
    with pytest.raises(ValueError, match="'shared' is called 2 times"):
        precise_bn.PreciseBN(twice, np.zeros((4, 3), "float32"), steps=1)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        precise_bn.PreciseBN(model, np.zeros((4, 5), "float32"), steps=0)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute")
def test_tf_distribute_mirrored_pools_every_replica():
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(64, 5)) * [1, 2, 3, 4, 5] + 3).astype("float32")
    with strategy.scope():
        inputs = keras.Input((5,))
        h = keras.layers.Dense(6, name="d1")(inputs)
        model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn1")(h))
        data = tf.data.Dataset.from_tensor_slices(x).batch(16)
        callback = precise_bn.PreciseBN(model, data, steps=4)
    callback.recompute()
    w, b = model.get_layer("d1").get_weights()
    h = x.astype(np.float64) @ w + b
    layer = model.get_layer("bn1")
    np.testing.assert_allclose(layer.moving_mean.numpy(), h.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.moving_variance.numpy(), h.var(0), rtol=1e-4, atol=1e-4)
