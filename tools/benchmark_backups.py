"""What a versioned backup costs, against Keras's one file written in place.

    python tools/benchmark_backups.py                      # ResNet-50, 1000 classes
    python tools/benchmark_backups.py --model=resnet8 --image_size=28 --num_classes=10

Builds the model with LARS (its momentum slots built, as after a step) and,
in one process, alternates --repeats times: Keras's `save_weights` onto one
file in place (what `keras.callbacks.BackupAndRestore` does), and
`tf_lars.training.backups.write` (a new version: the weights, `fsync`, their
SHA-256, the metadata through a rename, the versions beyond --keep removed).
It also times the parts a versioned backup adds (the flush of a freshly
saved file, its hash), the check a restarted run makes before it resumes
(hashing the newest version) and the load. Prints the medians and their ratio; --out
writes them as JSON.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import tf_lars
from tf_lars.training import backups


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50", choices=sorted(tf_lars.models.MODELS))
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--num_classes", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--keep", type=int, default=2)
    p.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    p.add_argument("--out", default=None)
    return p.parse_args()


def build(args):
    model = tf_lars.models.build(
        args.model,
        num_classes=args.num_classes,
        image_size=args.image_size,
        channels=args.channels,
    )
    model.compile(optimizer=tf_lars.LARS(0.1), loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    return model


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    args = parse()
    model = build(args)
    folder = args.dir or tempfile.mkdtemp(prefix="tf_lars_backups_")
    in_place = os.path.join(folder, "in_place", "latest.weights.h5")
    os.makedirs(os.path.dirname(in_place), exist_ok=True)
    versions = os.path.join(folder, "versions")

    def save(path):
        model.save_weights(path, overwrite=True)

    keras_s, ours_s, check_s, load_s = [], [], [], []
    for step in range(1, args.repeats + 1):
        keras_s.append(timed(lambda: model.save_weights(in_place, overwrite=True)))
        metadata = {"epoch": 0, "batch": step, "step": step}
        ours_s.append(timed(lambda m=metadata: backups.write(versions, save, m, args.keep)))
        backups.forget()  # as a restarted process: nothing verified yet
        start = time.perf_counter()
        newest = backups.latest(versions)
        check_s.append(time.perf_counter() - start)
        load_s.append(timed(lambda v=newest: model.load_weights(v.weights)))
    # Where a versioned backup's time goes, beyond the save: the flush, the hash.
    os.sync()  # nothing of the loop's writes left to flush
    model.save_weights(in_place, overwrite=True)
    with open(in_place, "rb+") as f:
        fsync_s = timed(lambda: os.fsync(f.fileno()))
    hash_s = timed(lambda: backups.digest(in_place))
    figures = {
        "model": args.model,
        "weights_bytes": os.path.getsize(in_place),
        "variables": len(model.weights) + len(model.optimizer.variables),
        "keras_in_place_s": statistics.median(keras_s),
        "versioned_s": statistics.median(ours_s),
        "ratio": statistics.median(ours_s) / statistics.median(keras_s),
        "fsync_s": fsync_s,
        "sha256_s": hash_s,
        "check_before_resume_s": statistics.median(check_s),
        "load_s": statistics.median(load_s),
        "repeats": args.repeats,
        "kept": sorted(os.listdir(versions)),
    }
    print(f"{args.model}: weights and optimizer slots, {figures['weights_bytes'] / 1e6:.1f} MB")
    for name in ("fsync_s", "sha256_s"):
        print(f"  {name:24s} {figures[name]:.3f} s (once)")
    for name in ("keras_in_place_s", "versioned_s", "check_before_resume_s", "load_s"):
        print(f"  {name:24s} {figures[name]:.3f} s (median of {args.repeats})")
    print(f"  versioned / in place    {figures['ratio']:.2f}")
    print(json.dumps(figures))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
