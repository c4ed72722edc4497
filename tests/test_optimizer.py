"""LARS's arithmetic against references written independently of it.

Backend-neutral: these tests use only `keras` and numpy, so they also run
under KERAS_BACKEND=jax (see test_backends.py).
"""

import keras
import numpy as np
import pytest

import tf_lars
from tf_lars import LARS


def numpy_lars(
    w,
    grads,
    lr,
    momentum=0.9,
    nesterov=False,
    wd=0.0,
    eta=1e-3,
    eps=0.0,
    form="paper",
    decay=True,
    adapt=True,
    clip=False,
    rate_outside=False,
):
    """The rule of the paper, in float64, one variable, a list of gradients.

    `lr` is a number or a list of one rate per step. `rate_outside=True` is
    PyTorch's convention instead (`v = m*v + r*d; w -= lr*v`), for tests
    that tell the two apart.
    """
    w = np.array(w, np.float64)
    v = np.zeros_like(w)
    rates = list(lr) if np.ndim(lr) else [lr] * len(grads)
    for grad, lr in zip(grads, rates):
        grad = np.asarray(grad, np.float64)
        wd_used = wd if decay else 0.0
        d = grad + wd_used * w
        r = 1.0
        if adapt:
            wn, gn, dn = (np.linalg.norm(x) for x in (w, grad, d))
            if form == "paper":
                ok, r = wn > 0 and gn > 0, eta * wn / (gn + wd_used * wn + eps)
            else:
                ok, r = wn > 0 and dn > 0, eta * wn / (dn + eps)
            if clip:
                r = min(r / lr, 1.0)
            r = r if ok else 1.0
        if rate_outside:
            v = momentum * v + r * d
            w = w - lr * (momentum * v + r * d if nesterov else v)
            continue
        v = momentum * v + lr * r * d
        w = w - (momentum * v + lr * r * d if nesterov else v)
    return w


def run(opt, initial, grads_per_step):
    """Applies `grads_per_step` (list of lists) to fresh variables."""
    variables = [keras.Variable(np.array(x, np.float32), name=name) for name, x in initial.items()]
    for grads in grads_per_step:
        opt.apply([keras.ops.convert_to_tensor(np.array(g, np.float32)) for g in grads], variables)
    return [keras.ops.convert_to_numpy(v) for v in variables]


@pytest.mark.parametrize("form", ["paper", "decayed_gradient"])
@pytest.mark.parametrize("momentum,nesterov", [(0.9, False), (0.9, True), (0.0, False)])
def test_five_steps_match_numpy_reference(form, momentum, nesterov):
    rng = np.random.default_rng(1)
    kernel, bias = rng.normal(size=(3, 4)), rng.normal(size=(4,))
    grads = [[rng.normal(size=(3, 4)), rng.normal(size=(4,))] for _ in range(5)]
    kw = dict(momentum=momentum, nesterov=nesterov, wd=0.01, eta=0.05)
    opt = LARS(
        learning_rate=0.5,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=0.01,
        trust_coefficient=0.05,
        trust_ratio=form,
    )
    got_kernel, got_bias = run(opt, {"kernel": kernel, "bias": bias}, grads)
    # The kernel (rank 2) is decayed and adapted; the bias (rank 1) is
    # excluded from both by default.
    want_kernel = numpy_lars(kernel, [g[0] for g in grads], 0.5, form=form, **kw)
    want_bias = numpy_lars(
        bias, [g[1] for g in grads], 0.5, form=form, decay=False, adapt=False, **kw
    )
    np.testing.assert_allclose(got_kernel, want_kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_bias, want_bias, rtol=1e-5, atol=1e-6)
    assert np.abs(got_kernel - kernel).max() > 1e-2  # the test moves weights


@pytest.mark.parametrize("nesterov", [False, True])
def test_scheduled_rate_sits_inside_the_momentum_buffer(nesterov):
    # Warmup over 3 steps to 2.0, then polynomial decay (power 2) to 0 at
    # step 8: the rates of steps 0..7 worked out by hand from the formula.
    rates = [
        0.0,
        2 / 3,
        4 / 3,
        2.0,
        2 * (4 / 5) ** 2,
        2 * (3 / 5) ** 2,
        2 * (2 / 5) ** 2,
        2 * (1 / 5) ** 2,
    ]
    schedule = tf_lars.schedules.WarmupPolynomialDecay(2.0, total_steps=8, warmup_steps=3)
    rng = np.random.default_rng(4)
    kernel = rng.normal(size=(3, 4))
    grads = [[rng.normal(size=(3, 4))] for _ in rates]
    opt = LARS(
        learning_rate=schedule,
        momentum=0.9,
        nesterov=nesterov,
        weight_decay=0.01,
        trust_coefficient=0.05,
    )
    (got,) = run(opt, {"kernel": kernel}, grads)
    kw = dict(nesterov=nesterov, wd=0.01, eta=0.05)
    inside = numpy_lars(kernel, [g[0] for g in grads], rates, **kw)
    outside = numpy_lars(kernel, [g[0] for g in grads], rates, rate_outside=True, **kw)
    # The two conventions part as soon as the rate changes, by far more
    # than the tolerance below: the comparison tells them apart.
    assert np.abs(inside - outside).max() > 1e-3
    np.testing.assert_allclose(got, inside, rtol=1e-5, atol=1e-6)


def test_single_step_by_hand():
    # w = [3, 4] (||w|| = 5), g = [0.6, 0.8] (||g|| = 1), wd = 0.1, eta = 0.01:
    # r = 0.01 * 5 / (1 + 0.1 * 5) = 1/30; g + wd*w = [0.9, 1.2];
    # v = lr * r * [0.9, 1.2] = 2/30 * [0.9, 1.2] = [0.06, 0.08].
    # Here g is parallel to w, so ||g + wd*w|| = 1.5 too: both forms agree.
    for form in ("paper", "decayed_gradient"):
        opt = LARS(
            learning_rate=2.0,
            weight_decay=0.1,
            trust_coefficient=0.01,
            trust_ratio=form,
            exclude_from_weight_decay=[],
        )
        (w,) = run(opt, {"w": [3.0, 4.0]}, [[[0.6, 0.8]]])
        np.testing.assert_allclose(w, [2.94, 3.92], rtol=1e-6)


def ratio_after_one_step(form, w, g, wd, eta, eps=0.0):
    opt = LARS(
        learning_rate=1.0,
        momentum=0.0,
        weight_decay=wd,
        epsilon=eps,
        trust_coefficient=eta,
        trust_ratio=form,
        exclude_from_weight_decay=[],
        track_trust_ratios=True,
    )
    (new_w,) = run(opt, {"w": w}, [[g]])
    ((path, (ratio, w_norm, g_norm)),) = opt.trust_ratio_stats().items()
    assert path == "w"
    np.testing.assert_allclose([w_norm, g_norm], [np.linalg.norm(w), np.linalg.norm(g)], rtol=1e-6)
    # The step itself must carry that ratio: w - new_w = r * (g + wd * w).
    step = np.asarray(w) - new_w  # float32: error up to eps * |w|
    np.testing.assert_allclose(
        step, ratio * (np.asarray(g) + wd * np.asarray(w)), rtol=1e-4, atol=2e-7 * np.abs(w).max()
    )
    return ratio


def test_published_trust_ratios():
    w, g = [1.0, 2.0, 3.0, 4.0], [0.1, -0.2, 0.3, 0.05]
    paper = ratio_after_one_step("paper", w, g, wd=0.01, eta=1e-3)
    decayed = ratio_after_one_step("decayed_gradient", w, g, wd=0.01, eta=1e-3)
    np.testing.assert_allclose(paper, 0.0126710, rtol=1e-5)
    np.testing.assert_allclose(decayed, 0.0136293, rtol=1e-5)
    # torchlars tests/test_compute_adaptive_lr.py: ||w|| = 1.234, ||g|| = 5.678.
    torchlars = ratio_after_one_step(
        "paper", [1.234, 0.0], [0.0, 5.678], wd=1e-4, eta=1e-3, eps=1e-8
    )
    np.testing.assert_allclose(torchlars, 0.000217325, rtol=1e-5)


@pytest.mark.parametrize("form", ["paper", "decayed_gradient"])
@pytest.mark.parametrize(
    "w,g", [([0.0, 0.0], [1.0, 2.0]), ([1.0, 2.0], [0.0, 0.0]), ([0.0, 0.0], [0.0, 0.0])]
)
def test_zero_norm_gives_ratio_one_and_no_nan(form, w, g):
    opt = LARS(
        learning_rate=0.5,
        momentum=0.0,
        trust_ratio=form,
        trust_coefficient=0.01,
        exclude_from_weight_decay=[],
        track_trust_ratios=True,
    )
    (new_w,) = run(opt, {"w": w}, [[g]])
    assert np.all(np.isfinite(new_w))
    assert opt.trust_ratio_stats()["w"][0] == 1.0
    np.testing.assert_allclose(new_w, np.subtract(w, 0.5 * np.asarray(g)))


def test_paper_ratio_never_exceeds_decayed_gradient_ratio():
    rng = np.random.default_rng(2)
    for _ in range(20):
        w, g = rng.normal(size=6), rng.normal(size=6)
        wd = float(rng.uniform(0, 1))
        paper = ratio_after_one_step("paper", w, g, wd, 1e-3)
        decayed = ratio_after_one_step("decayed_gradient", w, g, wd, 1e-3)
        # Each pinned to its formula in numpy, so two forms made one fail here.
        wn = np.linalg.norm(w)
        np.testing.assert_allclose(paper, 1e-3 * wn / (np.linalg.norm(g) + wd * wn), rtol=1e-5)
        np.testing.assert_allclose(decayed, 1e-3 * wn / np.linalg.norm(g + wd * w), rtol=1e-5)
        assert paper <= decayed * (1 + 1e-6)


def test_clip_keeps_local_rate_below_global():
    # eta = 1, ||w|| = 5, ||g|| = 1: r = 5, so lr * r = 0.5 > lr = 0.1.
    # Clipped, r = min(5 / 0.1, 1) = 1 and the step is lr * g.
    for clip, factor in ((False, 0.5), (True, 0.1)):
        opt = LARS(
            learning_rate=0.1,
            momentum=0.0,
            trust_coefficient=1.0,
            clip_trust_ratio=clip,
            exclude_from_weight_decay=[],
        )
        (w,) = run(opt, {"w": [3.0, 4.0]}, [[[0.6, 0.8]]])
        np.testing.assert_allclose(w, [3.0 - factor * 0.6, 4.0 - factor * 0.8], rtol=1e-6)
    rng = np.random.default_rng(3)
    w0, grads = rng.normal(size=5), [rng.normal(size=5) for _ in range(3)]
    opt = LARS(
        learning_rate=0.3,
        trust_coefficient=0.02,
        clip_trust_ratio=True,
        exclude_from_weight_decay=[],
    )
    (w,) = run(opt, {"w": w0}, [[g] for g in grads])
    np.testing.assert_allclose(w, numpy_lars(w0, grads, 0.3, eta=0.02, clip=True), rtol=1e-5)


@pytest.mark.parametrize("momentum,nesterov", [(0.9, False), (0.9, True), (0.0, False)])
def test_everything_excluded_equals_keras_sgd(momentum, nesterov):
    rng = np.random.default_rng(4)
    init = {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=(4,))}
    grads = [[rng.normal(size=(3, 4)), rng.normal(size=(4,))] for _ in range(5)]
    lars = LARS(
        learning_rate=0.1, momentum=momentum, nesterov=nesterov, exclude_from_weight_decay=[".*"]
    )
    sgd = keras.optimizers.SGD(learning_rate=0.1, momentum=momentum, nesterov=nesterov)
    for got, want in zip(run(lars, init, grads), run(sgd, init, grads)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_masks_match_paths_and_default_to_rank():
    model = keras.Sequential(
        [
            keras.Input((4, 4, 2)),
            keras.layers.Conv2D(3, 3, name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Flatten(),
            keras.layers.Dense(2, name="head"),
        ]
    )
    rng = np.random.default_rng(6)
    for v in model.trainable_variables:  # biases and beta start at 0: move them
        v.assign(rng.uniform(0.5, 1.0, size=v.shape))
    paths = [v.path.removeprefix(model.name + "/") for v in model.trainable_variables]
    zero_grads = [np.zeros(v.shape, np.float32) for v in model.trainable_variables]

    def decayed_and_adapted(**kwargs):
        opt = LARS(
            learning_rate=1.0, momentum=0.0, weight_decay=0.5, track_trust_ratios=True, **kwargs
        )
        before = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
        opt.apply(zero_grads, model.trainable_variables)
        after = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
        for v, b in zip(model.trainable_variables, before):
            v.assign(b)
        # A zero gradient moves a variable only through decay.
        decayed = {p for p, b, a in zip(paths, before, after) if np.abs(a - b).max() > 0}
        adapted = {p.removeprefix(model.name + "/") for p in opt.trust_ratio_stats()}
        return decayed, adapted

    kernels = {"conv/kernel", "head/kernel"}
    assert decayed_and_adapted() == (kernels, kernels)
    decayed, adapted = decayed_and_adapted(exclude_from_weight_decay=["bn/", "bias"])
    assert decayed == adapted == kernels
    decayed, adapted = decayed_and_adapted(
        exclude_from_weight_decay=["head"], exclude_from_layer_adaptation=["conv/bias"]
    )
    assert decayed == {"conv/kernel", "conv/bias", "bn/gamma", "bn/beta"}
    assert adapted == set(paths) - {"conv/bias"}
    decayed, adapted = decayed_and_adapted(exclude_from_layer_adaptation=["bn"])
    assert decayed == kernels  # decay keeps the rank rule
    assert adapted == set(paths) - {"bn/gamma", "bn/beta"}


def test_config_round_trip_rebuilds_identical_optimizer():
    schedule = tf_lars.schedules.WarmupPolynomialDecay(2.0, total_steps=10, warmup_steps=2)
    opt = LARS(
        learning_rate=schedule,
        momentum=0.8,
        nesterov=True,
        weight_decay=5e-4,
        trust_coefficient=0.02,
        epsilon=1e-9,
        trust_ratio="decayed_gradient",
        clip_trust_ratio=True,
        exclude_from_weight_decay=["bias", "gamma"],
        exclude_from_layer_adaptation=["beta"],
        track_trust_ratios=True,
        global_clipnorm=5.0,
        use_ema=True,
        gradient_accumulation_steps=2,
    )
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(clone, LARS)
    assert clone.get_config() == opt.get_config()
    config = opt.get_config()
    assert config["exclude_from_weight_decay"] == ["bias", "gamma"]
    assert config["exclude_from_layer_adaptation"] == ["beta"]
    assert config["weight_decay"] == 5e-4 and config["gradient_accumulation_steps"] == 2
    assert type(clone._learning_rate) is type(schedule)
    assert clone._learning_rate.get_config() == schedule.get_config()
    rng = np.random.default_rng(5)
    init = {"w": rng.normal(size=(2, 3))}
    grads = [[rng.normal(size=(2, 3))] for _ in range(6)]
    np.testing.assert_array_equal(run(opt, init, grads)[0], run(clone, init, grads)[0])


def test_found_by_name_after_import():
    assert isinstance(keras.optimizers.get("LARS"), LARS)
    config = {"class_name": "tf_lars>LARS", "config": {"momentum": 0.5}}
    assert keras.optimizers.get(config).momentum == 0.5


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"momentum": 1.0}, "momentum=1.0"),
        ({"weight_decay": -1.0}, "weight_decay=-1.0"),
        ({"trust_coefficient": 0.0}, "trust_coefficient=0.0"),
        ({"epsilon": -1e-3}, "epsilon=-0.001"),
        ({"trust_ratio": "lamb"}, "trust_ratio='lamb'"),
        ({"exclude_from_weight_decay": ["(unclosed"]}, "exclude_from_weight_decay"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        LARS(**kwargs)


def test_base_class_decoupled_decay_is_refused():
    with pytest.raises(ValueError, match="constructor arguments"):
        LARS().exclude_from_weight_decay(var_names=["bias"])
    assert LARS(weight_decay=0.1).weight_decay is None  # never decays twice


if __name__ == "__main__":  # Bazel's py_test runs the file itself.
    raise SystemExit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
