"""`--engine=arrays`: Fashion-MNIST in memory, each run in this process.

A run is the trainer's own `TrainingRun` (its recipe, plan, callbacks,
backups, summary), fed from arrays instead of shards (`ArrayRun`): the IDX
files, split with the shards' held-out draw, fed by
`tf_lars.data.arrays.Batches` and augmented on the device by Keras layers
(close to, not the same as, the shards' crops); PreciseBN pools its
statistics over training images without augmentation. It runs on any Keras
backend, without TensorFlow under JAX (no TensorBoard logs then).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Optional

from study.runners import Setting, command
from study.spec import Run


@functools.cache
def _array_run_class() -> Any:
    """`ArrayRun`, made when first needed (it imports Keras and the trainer)."""
    from tf_lars.data import arrays
    from tf_lars.training.run import TrainingRun

    class ArrayRun(TrainingRun):
        """A `TrainingRun` whose splits are arrays in memory (`splits`: split
        name -> (uint8 images, labels)), trained behind on-device augmentation."""

        splits: dict[str, Any]

        def batches(
            self,
            global_batch: int,
            training: bool,
            steps: int,
            split: Optional[str] = None,
            skip_steps: int = 0,
            counts: Any = None,
            autotune: bool = True,
        ) -> Any:
            # (A resumed run starts a fresh epoch order: arrays do not replay one.)
            images, labels = self.splits[split or ("train" if training else "validation")]
            return arrays.Batches(
                images,
                labels,
                global_batch,
                self.data.num_classes,
                training,
                seed=self.cfg.seed or 0,
            )

        def trained_model(self, network: Any) -> Any:
            return arrays.with_augmentation(network, seed=self.cfg.seed)

    return ArrayRun


class InMemory:
    """The splits in memory, and a call that trains one run of the study."""

    def __init__(self, idx_dir: Optional[str], holdout: int) -> None:
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

    def data(self) -> Any:
        from tf_lars.training import inputs

        counts = self.info["examples"]
        return inputs.DataSpec(
            data_format="fashion_mnist",
            data_dir="",
            image_size=28,
            channels=1,
            num_classes=10,
            preset="small",
            train_examples=counts["train"],
            eval_examples=counts["holdout"],
        )

    def __call__(
        self, run: Run, run_dir: str, epochs: float, warmup_epochs: float, extra: list[str]
    ) -> None:
        """Trains `run` in `run_dir` as the trainer does (history, backups,
        summary); a NaN loss leaves `diverged.txt` instead of a summary."""
        import keras

        import tf_lars  # noqa: F401 (registers LARS and the schedules)
        from tf_lars.training import config, engines

        setting = Setting(run_dir, "", self.info, epochs, warmup_epochs, extra)
        cfg = config.from_args(command(run, run_dir, setting)[3:])
        keras.backend.clear_session()  # (it resets the dtype policy: the run sets it after)
        engine = engines.make(cfg)
        trained = _array_run_class().prepare(cfg, engine, data=self.data(), splits=self.splits)
        histories, seconds = trained.train()
        if trained.preemption.stopped_at is not None:
            raise RuntimeError(
                f"run {run.name} was stopped (SIGTERM) and backed up in "
                f"{run_dir}/backup: run the same command to resume it there"
            )
        if trained.nan.message:
            with open(os.path.join(run_dir, "diverged.txt"), "w") as f:
                f.write(trained.nan.message + "\n")
            return
        trained.finish(histories, seconds)
