"""What LARS costs: its training step and its update against momentum SGD's.

    python tools/benchmark_optimizer.py --model=resnet8 --image_size=28 --batch_size=256
    KERAS_BACKEND=jax python tools/benchmark_optimizer.py --model=resnet50 \\
        --batch_size=256 --policy=mixed_bfloat16        # on a GPU

Keras only (any backend). In one process, on the same model, batch and data:
  1. full training step through `fit`: `keras.optimizers.SGD(momentum=0.9)`
     against `tf_lars.LARS`, timed fits alternating, median and fastest of
     --repeats (each fit's data without tf.data autotuning: see `fit_data`);
  2. the update alone (`optimizer.apply` over every trainable variable,
     compiled as `fit` compiles its step), SGD against LARS, against the
     memory-traffic floor: the bytes the update must move (SGD reads w,
     g, v and writes w, v; LARS also reads w and g once more for the
     norms) over the bandwidth of an
     in-place array update measured here (see `stream_bandwidth`).
Prints a markdown table and the ratios; --out writes them as JSON.
"""

import argparse
import json
import os
import statistics
import time

import keras
import numpy as np

import tf_lars

BACKEND = keras.backend.backend()


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet8", choices=sorted(tf_lars.models.MODELS))
    p.add_argument("--image_size", type=positive, default=28)
    p.add_argument("--channels", type=positive, default=None)
    p.add_argument("--batch_size", type=positive, default=256)
    p.add_argument("--steps", type=positive, default=10, help="steps per timed fit")
    p.add_argument("--repeats", type=positive, default=5)
    p.add_argument("--update_repeats", type=positive, default=50)
    p.add_argument(
        "--policy", default="float32", choices=["float32", "mixed_float16", "mixed_bfloat16"]
    )
    p.add_argument("--jit_compile", default="auto", choices=["auto", "true", "false"])
    p.add_argument("--out", default=None)
    return p.parse_args()


def build(args, optimizer):
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(args.policy)
    channels = args.channels or (1 if args.image_size <= 32 else 3)
    classes = 10 if args.image_size <= 32 else 1000
    model = tf_lars.models.build(
        args.model,
        num_classes=classes,
        image_size=args.image_size,
        channels=channels,
        input_dtype="uint8",
        mean=(127.0,),
        std=(64.0,),
    )
    model.compile(
        optimizer=optimizer,
        jit_compile=args.jit_compile,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    return model, channels, classes


def optimizers():
    return {
        "sgd": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        "lars": lambda: tf_lars.LARS(0.1, momentum=0.9, weight_decay=1e-4),
    }


def time_fits(args):
    """Ms per step of every timed `fit`, each optimizer, timed fits alternating."""
    models = {name: build(args, make()) for name, make in optimizers().items()}
    _, channels, classes = models["sgd"]
    rng = np.random.default_rng(0)
    n = args.steps * args.batch_size
    x = rng.integers(0, 256, size=(n, args.image_size, args.image_size, channels), dtype=np.uint8)
    y = keras.utils.to_categorical(rng.integers(0, classes, n), classes).astype(np.float32)
    data = fit_data(x, y, args.batch_size)
    times = {name: [] for name in models}
    for model, _, _ in models.values():  # compile and warm up
        model.fit(**data, epochs=1, verbose=0, shuffle=False)
    for _ in range(args.repeats):
        for name, (model, _, _) in models.items():
            start = time.perf_counter()
            model.fit(**data, epochs=1, verbose=0, shuffle=False)
            times[name].append((time.perf_counter() - start) * 1e3 / args.steps)
    return times, models


def fit_data(x, y, batch_size):
    """`fit`'s data arguments: the arrays, or under TensorFlow a `tf.data`
    pipeline over them with autotuning off.

    Each timed `fit` makes a new iterator and deletes it at the end. With
    tf.data's autotuning on (the default, also for the pipeline Keras builds
    over arrays), deleting an iterator waits for its autotuning thread: on
    2 CPU cores about 40% of fits ended with a 2 s wait, both cores idle
    (seen with py-spy in `RootDataset::Iterator::~Iterator`), which made the
    step time of such fits look 1.7x slower. There is nothing to tune in a
    pipeline over arrays in memory.
    """
    if BACKEND != "tensorflow":
        return dict(x=x, y=y, batch_size=batch_size)
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).cache()
    return dict(x=ds.with_options(options))


def update_timer(model, optimizer):
    """A compiled `apply` of fixed gradients to the model's variables."""
    variables = model.trainable_variables
    rng = np.random.default_rng(1)
    grads = [
        keras.ops.convert_to_tensor(rng.normal(size=v.shape).astype("float32") * 1e-3)
        for v in variables
    ]
    optimizer.build(variables)
    if BACKEND == "jax":
        import jax

        step = jax.jit(optimizer.stateless_apply)
        weights = [v.value for v in variables]
        slots = [v.value for v in optimizer.variables]

        def run():
            nonlocal weights, slots
            weights, slots = step(slots, grads, weights)
            jax.block_until_ready(weights)
    else:
        import tensorflow as tf

        # Compiled as `fit` compiles its steps (Keras resolves "auto" to no
        # XLA on CPUs, where XLA's reductions are slower).
        step = tf.function(
            lambda: optimizer.apply(grads, variables), jit_compile=bool(model.jit_compile)
        )

        def run():
            step()
            optimizer.iterations.numpy()  # wait for the update

    return run


def median_ms(run, repeats):
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def stream_bandwidth(n=64 * 2**20, short=2, long=22):
    """Bytes read + written per second by `x + 1` over `n` float32 values.

    One compiled call runs `short`, another `long` such passes in a loop (in
    place, as an optimizer updates its variables); the difference in time
    over `long - short` passes is one pass's, without the call's dispatch and
    synchronisation (on a GPU these take longer than the pass itself).
    """
    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        a = jnp.ones((n,), jnp.float32)
        copies = jax.jit(
            lambda v, k: jax.lax.fori_loop(0, k, lambda i, x: x + 1.0, v), static_argnums=1
        )
        timed = {k: (lambda k=k: copies(a, k).block_until_ready()) for k in (short, long)}
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        a = tf.ones((n,), tf.float32)

        def loop(k):
            body = lambda i, x: (i + 1, x + 1.0)  # noqa: E731
            # The sum (the same in both loops) brings one number back.
            fn = tf.function(
                lambda: tf.reduce_sum(tf.while_loop(lambda i, x: i < k, body, (0, a))[1]),
                jit_compile=True,
            )
            return lambda: fn().numpy()

        timed = {k: loop(k) for k in (short, long)}
    else:
        a = np.ones(n, np.float32)
        timed = {k: (lambda k=k: [np.add(a, 1.0, out=a) for _ in range(k)]) for k in (short, long)}
    differences = []  # each pair timed back to back, so a change of speed hits both
    for _ in range(8):
        ms = {k: median_ms(run, 1) for k, run in timed.items()}
        differences.append(ms[long] - ms[short])
    per_pass_s = max(statistics.median(differences), 1e-6) / (long - short) / 1e3
    return 2 * 4 * n / per_pass_s


def main():
    args = parse()
    if args.jit_compile != "auto":
        args.jit_compile = args.jit_compile == "true"
    fit_times, models = time_fits(args)
    fit_ms = {name: statistics.median(t) for name, t in fit_times.items()}
    fit_min_ms = {name: min(t) for name, t in fit_times.items()}
    update_ms = {
        name: median_ms(update_timer(m, m.optimizer), args.update_repeats)
        for name, (m, _, _) in models.items()
    }
    variables = models["sgd"][0].trainable_variables
    params = sum(int(np.prod(v.shape)) for v in variables)
    adapted = sum(int(np.prod(v.shape)) for v in variables if len(v.shape) > 1)
    bandwidth = stream_bandwidth()
    floor = {
        "sgd": 5 * 4 * params / bandwidth * 1e3,
        "lars": (5 * 4 * params + 2 * 4 * adapted) / bandwidth * 1e3,
    }
    result = dict(
        backend=BACKEND,
        model=args.model,
        image_size=args.image_size,
        batch_size=args.batch_size,
        policy=args.policy,
        params=params,
        adapted_tensors=sum(len(v.shape) > 1 for v in variables),
        fit_step_ms=fit_ms,
        fit_step_min_ms=fit_min_ms,
        fit_step_each_ms=fit_times,
        update_ms=update_ms,
        update_floor_ms=floor,
        update_jit_compile=BACKEND == "jax" or bool(models["sgd"][0].jit_compile),
        stream_bandwidth_GBps=bandwidth / 1e9,
        cores=os.cpu_count(),
    )
    print(
        f"{args.model}, batch {args.batch_size}, {args.image_size} px, {args.policy}, "
        f"{BACKEND} backend; {params:,} parameters in {len(variables)} tensors "
        f"({result['adapted_tensors']} adapted by LARS); in-place stream bandwidth "
        f"{bandwidth / 1e9:.1f} GB/s; XLA {'on' if result['update_jit_compile'] else 'off'}"
    )
    print("| | SGD (momentum 0.9) | tf_lars.LARS | LARS / SGD | LARS - SGD |")
    print("|---|---|---|---|---|")
    print(
        f"| training step via fit (ms) | {fit_ms['sgd']:.3f} | {fit_ms['lars']:.3f} | "
        f"{fit_ms['lars'] / fit_ms['sgd']:.3f} | {fit_ms['lars'] - fit_ms['sgd']:+.3f} |"
    )
    print(
        f"| training step, fastest of {args.repeats} (ms) | {fit_min_ms['sgd']:.3f} | "
        f"{fit_min_ms['lars']:.3f} | {fit_min_ms['lars'] / fit_min_ms['sgd']:.3f} | "
        f"{fit_min_ms['lars'] - fit_min_ms['sgd']:+.3f} |"
    )
    print(
        f"| update alone (ms) | {update_ms['sgd']:.3f} | {update_ms['lars']:.3f} | "
        f"{update_ms['lars'] / update_ms['sgd']:.3f} | "
        f"{update_ms['lars'] - update_ms['sgd']:+.3f} |"
    )
    print(
        f"| update's memory floor (ms) | {floor['sgd']:.3f} | {floor['lars']:.3f} | "
        f"{floor['lars'] / floor['sgd']:.3f} | {floor['lars'] - floor['sgd']:+.3f} |"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
