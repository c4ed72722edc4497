"""Helper of test_backends.py: one small `fit` with LARS, weights to a file.

Run as `KERAS_BACKEND=... python backend_fit.py OUT.npz [MODE]`. The initial
weights and the data come from numpy with fixed seeds, so every backend (and
every distribution MODE under JAX) starts from the same numbers. MODE:
`one` (default), or under JAX with two devices `data_parallel` or
`model_parallel` (kernels sharded on a "model" axis). Prints a JSON line
with what the run saw (backend, devices, the kernels' shardings).
"""

import json
import sys

import keras
import numpy as np

from tf_lars import LARS


def model_and_data():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            keras.layers.Dense(6, name="head"),
        ],
        name="net",
    )
    rng = np.random.default_rng(0)
    weights = []
    for w in model.weights:
        value = rng.normal(size=w.shape) * 0.5
        if w.name == "moving_variance":
            value = np.abs(value) + 0.5
        weights.append(value.astype(np.float32))
    model.set_weights(weights)
    x = rng.normal(size=(64, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 6, size=64)
    return model, x, y


def distribution(mode):
    if mode == "one":
        return None
    devices = keras.distribution.list_devices()
    if mode == "data_parallel":
        return keras.distribution.DataParallel(devices=devices)
    mesh = keras.distribution.DeviceMesh((1, len(devices)), ["batch", "model"], devices)
    layout = keras.distribution.LayoutMap(mesh)
    layout[".*conv/kernel"] = (None, None, None, "model")  # output channels
    layout[".*hidden/kernel"] = (None, "model")  # columns
    layout[".*head/kernel"] = ("model", None)  # rows
    return keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch")


def main(out, mode="one"):
    dist = distribution(mode)
    if dist is not None:
        keras.distribution.set_distribution(dist)
    model, x, y = model_and_data()
    model.compile(
        optimizer=LARS(learning_rate=0.5, weight_decay=1e-3, trust_coefficient=0.02),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    np.savez(out, *[keras.ops.convert_to_numpy(w) for w in model.weights])
    seen = {"backend": keras.backend.backend(), "mode": mode}
    if keras.backend.backend() == "jax":
        seen["devices"] = len(keras.distribution.list_devices())
        seen["shardings"] = {
            w.path: [
                str(w.value.sharding.spec) if hasattr(w.value.sharding, "spec") else "",
                list(w.value.addressable_shards[0].data.shape),
            ]
            for w in model.trainable_weights
            if w.name == "kernel"
        }
    print(json.dumps(seen))


if __name__ == "__main__":
    main(*sys.argv[1:])
