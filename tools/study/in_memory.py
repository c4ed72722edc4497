"""`--engine=arrays`: Fashion-MNIST in memory, each run in this process.

The recipe (flagfile, schedule, optimizer, model, plan) is the trainer's
own (`tf_lars.training.recipe`), as is the summary's writer; the data are
the IDX files, split with the shards' held-out draw and fed by
`tf_lars.data.arrays.Batches`, augmented on the device by Keras layers.
"""

from __future__ import annotations

import argparse
import os
import time

from study.runners import Setting, command


class InMemory:
    """--engine=arrays: Fashion-MNIST in memory, each run in this process."""

    # Sizes, and the `small` preset's mean and std (the shards' preset).
    DATA = argparse.Namespace(
        data_format="fashion_mnist",
        num_classes=10,
        image_size=28,
        channels=1,
        norm=((127.5,), (127.5,)),
    )

    def __init__(self, idx_dir, holdout):
        from tf_lars.data import fashion_mnist

        try:
            images, labels = fashion_mnist.load("train", idx_dir)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"--idx_dir: {e}") from None
        kept, held = fashion_mnist.split_holdout(labels, holdout)  # the builder's draw
        self.splits = {
            "train": (images[kept], labels[kept]),
            "holdout": (images[held], labels[held]),
            "validation": fashion_mnist.load("test", idx_dir),
        }
        self.info = dict(examples={k: len(v[1]) for k, v in self.splits.items()})

    def __call__(self, run, run_dir, epochs, warmup_epochs, extra):
        """Trains `run`; writes `history.csv` and `summary.json` as the trainer does."""
        import keras
        import numpy as np

        import tf_lars  # noqa: F401 (registers LARS and the schedules)
        from tf_lars.data import arrays
        from tf_lars.training import config, engines, precise_bn, recipe
        from tf_lars.training.summary import Summary

        counts = self.info["examples"]
        setting = Setting(run_dir, "", self.info, epochs, warmup_epochs, extra)
        cfg = config.from_args(command(run, run_dir, setting)[3:])
        data = argparse.Namespace(
            **vars(self.DATA), train_examples=counts["train"], eval_examples=counts["holdout"]
        )
        plan = recipe.derive(cfg, data, 1)
        keras.backend.clear_session()  # (it resets the dtype policy: set it after)
        keras.utils.set_random_seed(run.seed)
        if cfg.mixed_precision != "none":
            keras.config.set_dtype_policy(cfg.mixed_precision)
        model = recipe.model(cfg, data)
        trained = arrays.with_augmentation(model, seed=run.seed)
        trained.compile(**recipe.compile_args(plan, cfg))

        def batches(split, training):
            images, labels = self.splits[split]
            return arrays.Batches(
                images,
                labels,
                cfg.batch_size if training else plan.eval_batch,
                10,
                training,
                seed=run.seed,
            )

        callbacks = [
            keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv")),
            keras.callbacks.TerminateOnNaN(),
        ]
        if plan.precise_bn_steps:  # On training images without augmentation.
            pooled = batches("train", True)
            callbacks.append(
                precise_bn.PreciseBN(model, pooled, min(plan.precise_bn_steps, len(pooled)))
            )
        os.makedirs(run_dir, exist_ok=True)
        start = time.time()
        fitted = trained.fit(
            batches("train", True),
            epochs=plan.epochs,
            validation_data=batches("holdout", False),
            verbose=0,
            callbacks=callbacks,
        )
        seconds = time.time() - start
        if not np.all(np.isfinite(fitted.history["loss"])):
            with open(os.path.join(run_dir, "diverged.txt"), "w") as f:
                f.write("loss is NaN\n")
            return
        # The last epoch's evaluation is the final model's: not run again.
        held = {k: fitted.history[f"val_{k}"][-1] for k in ("accuracy", "top5", "loss")}
        test = trained.evaluate(batches("validation", False), return_dict=True, verbose=0)
        steps = int(keras.ops.convert_to_numpy(trained.optimizer.iterations))
        summary = Summary(
            top1=held["accuracy"],
            top5=held["top5"],
            loss=held["loss"],
            steps=steps,
            eval_split="holdout",
            wall_seconds=seconds,
            wall_seconds_in_all=seconds,
            images_per_second=steps * cfg.batch_size / seconds,
            epochs_run=len(fitted.epoch),
            backend=keras.backend.backend(),
            machine=engines.machine(),
            test_split="validation",
            test_top1=test["accuracy"],
            test_top5=test["top5"],
            test_loss=test["loss"],
        )
        model.save(os.path.join(run_dir, "model.keras"))
        summary.write(run_dir)
