"""What Keras promises of every optimizer, checked on LARS.

Keras's own optimizer tests check these behaviours of its built-in
optimizers; these tests are written for LARS, each against a numpy reference
(`numpy_lars`) or a plain LARS run, never against the code's own output.
Backend-neutral: test_backends.py runs them under JAX and torch too.
"""

import pickle

import helpers
import keras
import numpy as np
import pytest
from keras import ops
from test_optimizer import numpy_lars, run

from tf_lars import LARS

BACKEND = keras.backend.backend()
HP = dict(learning_rate=0.5, momentum=0.9, weight_decay=0.01, trust_coefficient=0.05)
NP_HP = dict(momentum=0.9, wd=0.01, eta=0.05)


def problem(steps=4, seed=3, scale=1.0):
    """A kernel (decayed, adapted), a bias (neither) and their gradients."""
    rng = np.random.default_rng(seed)
    init = {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=(4,))}
    grads = [
        [scale * rng.normal(size=(3, 4)), scale * rng.normal(size=(4,))] for _ in range(steps)
    ]
    return init, grads


def reference(init, grads):
    """numpy_lars on the kernel and the bias of `problem`."""
    kernel = numpy_lars(init["kernel"], [g[0] for g in grads], 0.5, **NP_HP)
    bias = numpy_lars(init["bias"], [g[1] for g in grads], 0.5, decay=False, adapt=False, **NP_HP)
    return [kernel, bias]


assert_all_close = helpers.assert_weights_close


def test_two_optimizers_get_their_own_names_and_variable_paths():
    a, b = LARS(), LARS()
    assert a.name.startswith("lars") and b.name.startswith("lars") and a.name != b.name
    assert LARS(name="mine").name == "mine"
    variables = [keras.Variable(np.ones((2, 2), np.float32), name="w")]
    a.build(variables)
    b.build(variables)
    paths_a = {v.path for v in a.variables}
    paths_b = {v.path for v in b.variables}
    assert len(paths_a) == len(a.variables) and not paths_a & paths_b


@pytest.mark.parametrize("clip", ["clipvalue", "clipnorm", "global_clipnorm"])
def test_gradient_clipping_comes_before_the_rule(clip):
    init, grads = problem(scale=3.0)
    limit = 0.5
    clipped = []
    for kernel_g, bias_g in grads:
        if clip == "clipvalue":
            pair = [np.clip(kernel_g, -limit, limit), np.clip(bias_g, -limit, limit)]
        elif clip == "clipnorm":
            pair = [g * min(1.0, limit / np.linalg.norm(g)) for g in (kernel_g, bias_g)]
        else:
            total = np.sqrt(sum(np.sum(g**2) for g in (kernel_g, bias_g)))
            pair = [g * min(1.0, limit / total) for g in (kernel_g, bias_g)]
        clipped.append(pair)
    got = run(LARS(**HP, **{clip: limit}), init, grads)
    assert_all_close(got, reference(init, clipped))
    # The clipping matters here: the unclipped rule lands elsewhere.
    assert np.abs(got[1] - reference(init, grads)[1]).max() > 1e-2


def _linear_fit(optimizer, steps=6):
    """Fits a bias-free linear model with MSE on `steps` samples, one a batch."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 3)).astype(np.float32)[:steps]
    y = rng.normal(size=(6, 2)).astype(np.float32)[:steps]
    w0 = rng.normal(size=(3, 2)).astype(np.float32)
    layer = keras.layers.Dense(2, use_bias=False, name="linear")
    model = keras.Sequential([keras.Input((3,)), layer])
    layer.kernel.assign(w0)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=1, epochs=1, shuffle=False, verbose=0)
    return x, y, w0, ops.convert_to_numpy(layer.kernel)


def test_fit_matches_numpy_gradients_and_rule():
    """The linear model's MSE gradient by hand, then numpy_lars: fit agrees."""
    x, y, w0, got = _linear_fit(LARS(**HP))
    w = w0.astype(np.float64)
    grads = []
    want = w
    for i in range(len(x)):  # each gradient at the weights of its step
        xi, yi = x[i : i + 1].astype(np.float64), y[i : i + 1].astype(np.float64)
        grads.append(2.0 * xi.T @ (xi @ want - yi) / yi.size)
        want = numpy_lars(w, grads, 0.5, **NP_HP)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_exponential_moving_average_inside_fit():
    # The weights after 1..6 steps of plain runs, then their average by hand.
    trajectory = [_linear_fit(LARS(**HP), steps=k)[3] for k in range(1, 7)]
    momentum = 0.7
    ema = trajectory[0]  # Keras starts the average at the first step's weights.
    for w in trajectory[1:]:
        ema = momentum * ema + (1 - momentum) * w
    got = _linear_fit(LARS(use_ema=True, ema_momentum=momentum, **HP))[3]
    np.testing.assert_allclose(got, ema, rtol=1e-5, atol=1e-6)
    assert np.abs(got - trajectory[-1]).max() > 1e-3  # the average is not the last step


def test_loss_scale_factor_unscales_before_the_rule():
    init, grads = problem()
    factor = 1024.0
    opt = LARS(loss_scale_factor=factor, **HP)
    assert float(ops.convert_to_numpy(opt.scale_loss(ops.convert_to_tensor(2.0)))) == 2048.0
    scaled = [[g * factor for g in step] for step in grads]
    assert_all_close(run(opt, init, scaled), reference(init, grads))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_fit_steps_on_unscaled_gradients(policy):
    def fit():
        rng = np.random.default_rng(5)
        x = rng.normal(size=(32, 3)).astype(np.float32)
        y = rng.normal(size=(32, 2)).astype(np.float32)
        layer = keras.layers.Dense(2, name="linear")
        model = keras.Sequential([keras.Input((3,)), layer])
        initial = [rng.normal(size=(3, 2)), np.zeros(2)]
        layer.set_weights(initial)
        model.compile(optimizer=LARS(**HP), loss="mse")
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        return model.optimizer, initial, [ops.convert_to_numpy(v) for v in layer.weights]

    _, initial, want = fit()
    keras.config.set_dtype_policy(policy)
    optimizer, _, got = fit()
    if policy == "mixed_float16":  # Keras wraps LARS to scale the loss.
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    # A scaled gradient (x 32768) reaching LARS would make the bias's step
    # (not adapted) that much larger; half precision moves it by < 3%.
    for g, w, start in zip(got, want, initial):
        assert np.linalg.norm(g - w) < 0.05 * np.linalg.norm(w - start)


def stateless_run(opt, init, grads_per_step):
    """`run` through `stateless_apply`, the way `fit` applies under JAX."""
    variables = [keras.Variable(np.float32(x), name=k) for k, x in init.items()]
    opt.build(variables)
    values, state = [v.value for v in variables], [v.value for v in opt.variables]
    for grads in grads_per_step:
        values, state = opt.stateless_apply(
            state, [ops.convert_to_tensor(np.float32(g)) for g in grads], values
        )
    for v, value in zip(opt.variables, state):
        v.assign(value)
    return [ops.convert_to_numpy(v) for v in values]


def test_loss_scale_optimizer_unscales_and_skips_non_finite_steps():
    init, grads = problem()
    scale = 2.0**10
    opt = keras.optimizers.LossScaleOptimizer(LARS(**HP), initial_scale=scale)
    # Under JAX its stateful `apply` does not trace (a Keras limit): go stateless.
    apply = stateless_run if BACKEND == "jax" else run
    # One step with an overflowed gradient among the real ones: skipped.
    # After it the scale halves, and the later gradients are scaled by that.
    poisoned = (
        [[g * scale for g in step] for step in grads[:2]]
        + [[np.full((3, 4), np.inf), np.ones(4)]]
        + [[g * scale / 2 for g in step] for step in grads[2:]]
    )
    got = apply(opt, init, poisoned)
    assert_all_close(got, reference(init, grads))
    assert float(ops.convert_to_numpy(opt.dynamic_scale)) == scale / 2


def test_variable_constraints_apply_after_each_step():
    rng = np.random.default_rng(6)
    layer = keras.layers.Dense(4, use_bias=False, kernel_constraint=keras.constraints.NonNeg())
    layer.build((None, 3))
    w0 = np.abs(rng.normal(size=(3, 4))) * 0.1
    layer.kernel.assign(w0.astype(np.float32))
    grads = [rng.normal(size=(3, 4)) for _ in range(4)]
    opt = LARS(
        learning_rate=1.0, momentum=0.0, trust_coefficient=0.5, exclude_from_weight_decay=[]
    )
    want = w0
    for g in grads:
        opt.apply([ops.convert_to_tensor(g.astype(np.float32))], layer.trainable_variables)
        want = np.maximum(numpy_lars(want, [g], 1.0, momentum=0.0, eta=0.5), 0.0)
    got = ops.convert_to_numpy(layer.kernel)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert (got == 0).any() and (got > 0).any()  # the constraint bit


def test_set_weights_carries_the_momentum():
    init, grads = problem(steps=5)
    first = LARS(**HP)
    variables = [keras.Variable(np.array(x, np.float32), name=k) for k, x in init.items()]
    for step in grads[:4]:
        first.apply([ops.convert_to_tensor(np.float32(g)) for g in step], variables)
    # A second optimizer, built on a copy, given the first one's state.
    copies = [keras.Variable(ops.convert_to_numpy(v), name=v.name) for v in variables]
    second = LARS(**HP)
    second.build(copies)
    second.set_weights([ops.convert_to_numpy(v) for v in first.variables])
    for opt, target in ((first, variables), (second, copies)):
        opt.apply([ops.convert_to_tensor(np.float32(g)) for g in grads[4]], target)
    assert_all_close([ops.convert_to_numpy(v) for v in copies], reference(init, grads))
    assert int(ops.convert_to_numpy(second.iterations)) == 5


def test_pickled_optimizer_keeps_its_config_and_rule():
    opt = LARS(nesterov=True, exclude_from_weight_decay=["bias"], **HP)
    clone = pickle.loads(pickle.dumps(opt))
    assert clone.get_config() == opt.get_config()
    init, grads = problem()
    assert_all_close(run(clone, init, grads), run(opt, init, grads), rtol=1e-6, atol=1e-7)


def test_overwrite_with_gradient_variables_take_the_gradient_and_keep_the_masks():
    init, grads = problem()
    variables = [
        keras.Variable(np.float32(init["kernel"]), name="kernel"),
        keras.Variable(np.zeros(2, np.float32), name="amax_history"),
        keras.Variable(np.float32(init["bias"]), name="bias"),
    ]
    variables[1].overwrite_with_gradient = True
    opt = LARS(**HP)
    history = [np.float32([i, -i]) for i in range(len(grads))]
    for step, h in zip(grads, history):
        opt.apply(
            [
                ops.convert_to_tensor(np.float32(step[0])),
                ops.convert_to_tensor(h),
                ops.convert_to_tensor(np.float32(step[1])),
            ],
            variables,
        )
    kernel, amax, bias = (ops.convert_to_numpy(v) for v in variables)
    np.testing.assert_array_equal(amax, history[-1])
    assert_all_close([kernel, bias], reference(init, grads))


def test_iterations_count_applied_steps_and_accumulation_averages():
    init, grads = problem(steps=6)
    plain = LARS(**HP)
    run(plain, init, grads)
    assert int(ops.convert_to_numpy(plain.iterations)) == 6
    accumulating = LARS(gradient_accumulation_steps=3, **HP)
    got = run(accumulating, init, grads)
    assert int(ops.convert_to_numpy(accumulating.iterations)) == 2
    means = [[np.mean([g[i] for g in grads[k : k + 3]], axis=0) for i in range(2)] for k in (0, 3)]
    assert_all_close(got, reference(init, means))


def _sparse(rows, values, shape):
    """A sparse gradient of this backend's kind: the rows `rows` set to `values`."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.IndexedSlices(
            tf.constant(values, tf.float32), tf.constant(rows), tf.constant(shape)
        )
    indices = np.array([[r, c] for r in rows for c in range(shape[1])])
    entries = np.float32(values).reshape(-1)
    if BACKEND == "torch":  # what a custom loop's sparse embedding gives
        import torch

        return torch.sparse_coo_tensor(torch.tensor(indices.T), torch.tensor(entries), shape)
    import jax.experimental.sparse as jsparse

    return jsparse.BCOO((entries, indices), shape=tuple(shape))


def test_sparse_gradients_equal_their_dense_form():
    rng = np.random.default_rng(8)
    table = rng.normal(size=(6, 3))
    rows = np.array([1, 4, 1])  # a repeated row adds up, as in an embedding's gradient
    values = rng.normal(size=(3, 3))
    dense = np.zeros((6, 3))
    np.add.at(dense, rows, values)
    for momentum in (0.0, 0.9):
        kw = dict(
            learning_rate=0.5,
            momentum=momentum,
            weight_decay=0.01,
            trust_coefficient=0.05,
            exclude_from_weight_decay=[],
        )
        variable = keras.Variable(np.float32(table), name="embeddings")
        opt = LARS(**kw)
        for _ in range(2):
            opt.apply([_sparse(rows, values, [6, 3])], [variable])
        want = numpy_lars(table, [dense, dense], 0.5, momentum=momentum, wd=0.01, eta=0.05)
        np.testing.assert_allclose(ops.convert_to_numpy(variable), want, rtol=1e-5, atol=1e-6)


def test_an_embedding_trains_as_its_one_hot_matmul_does():
    """Embedding's gradient (sparse on TF) against the same table as a dense kernel."""
    rng = np.random.default_rng(9)
    tokens = rng.integers(0, 12, size=(24, 5))
    labels = rng.normal(size=(24, 1)).astype(np.float32)
    table = rng.normal(size=(12, 4)).astype(np.float32)

    def fit(lookup, inputs, dtype):
        model = keras.Sequential(
            [
                keras.Input(inputs.shape[1:], dtype=dtype),
                lookup,
                keras.layers.GlobalAveragePooling1D(),
                keras.layers.Dense(1, kernel_initializer="ones", name="head"),
            ]
        )
        lookup.weights[0].assign(table)
        model.compile(
            optimizer=LARS(learning_rate=1.0, weight_decay=1e-3, trust_coefficient=0.02),
            loss="mse",
        )
        model.fit(inputs, labels, batch_size=8, epochs=2, shuffle=False, verbose=0)
        return ops.convert_to_numpy(lookup.weights[0])

    embedded = fit(keras.layers.Embedding(12, 4), tokens, "int32")
    one_hot = np.eye(12, dtype=np.float32)[tokens]
    matmul = fit(keras.layers.Dense(4, use_bias=False), one_hot, "float32")
    np.testing.assert_allclose(embedded, matmul, rtol=1e-5, atol=1e-6)
    assert np.abs(embedded - table).max() > 1e-3


if __name__ == "__main__":  # Bazel's py_test runs the file itself.
    raise SystemExit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
