"""One training run: the object `tf-lars-train` drives.

`TrainingRun.prepare(cfg, engine)` does everything that can fail on bad
flags or data before any training (it raises ValueError or
FileNotFoundError with one line); `train()` then runs to the end and
`finish` reports. The run owns its model, its inputs, its callbacks and its
position (`position.Position`); `summary.Summary` is its report.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any, Optional

import keras
from absl import logging

from tf_lars import monitoring
from tf_lars.data.counts import BadRecords
from tf_lars.training import checkpoints, faults, inputs, lock, recipe
from tf_lars.training.config import Plan, TrainConfig
from tf_lars.training.engines import Engine, has_tensorflow, machine
from tf_lars.training.position import Position, StopAtStep
from tf_lars.training.summary import Summary


def check_config(cfg: TrainConfig) -> None:
    """The settings that are wrong whatever the machine."""
    if cfg.deterministic and cfg.seed is None:
        raise ValueError("--deterministic needs --seed: give both, e.g. --seed=1")
    if cfg.data_service:
        check_service(cfg)
    if cfg.log_noise_scale and cfg.noise_scale_micro_batches == 1:
        raise ValueError(
            "--noise_scale_micro_batches=1 cannot estimate the noise scale, which "
            "needs two batch sizes: give 2 or more (or 0 for the default)"
        )


def check_service(cfg: TrainConfig) -> None:
    """What `--data_service` cannot do (see `tf_lars.data.service`)."""
    if cfg.data_format == "synthetic":
        raise ValueError(
            "--data_service decodes shards: give --data_format and --data_dir "
            "(synthetic data is made where it trains)"
        )
    for flag, why in (
        ("deterministic", "the service's workers race for shards, so the order cannot repeat"),
        ("strict_data", "records are checked in the service's workers; it would not stop here"),
    ):
        if getattr(cfg, flag):
            raise ValueError(f"--{flag} with --data_service: {why}; drop one of them")


def noise_scale_parts(cfg: TrainConfig, replicas: int) -> int:
    """The parts `--log_noise_scale` cuts a batch into (checked against the batch)."""
    parts = cfg.noise_scale_micro_batches or max(4, replicas)
    if cfg.batch_size % parts:
        raise ValueError(
            f"--noise_scale_micro_batches={parts} does not divide --batch_size="
            f"{cfg.batch_size}: give a number of parts that does"
        )
    return parts


class TrainingRun:
    """A run's parts, built by `prepare`, and its place in training.

    Attributes:
        cfg, engine, plan, data: the settings, the engine, what follows from
            them, the data's spec (`inputs.DataSpec`).
        model: the compiled Keras model that trains.
        network: the model saved (the same, unless `trained_model` wraps it).
        eval_ds, test_ds: the evaluation inputs (`test_ds` None without a test split).
        position: where training is (`position.Position`).
        backup, preemption, nan: the callbacks the driver asks after training.
    """

    data: inputs.DataSpec
    plan: Plan
    model: Any
    network: Any
    eval_ds: Any
    test_ds: Any
    scratch: str
    nan: monitoring.StopOnNaN
    backup: checkpoints.BackupAndRestore
    preemption: faults.Preemption
    skipped: Optional[monitoring.SkippedRecords]

    def __init__(self, cfg: TrainConfig, engine: Engine) -> None:
        self.cfg, self.engine = cfg, engine
        self.bad_records = BadRecords()  # Host variables, outside the engine's scope.
        self.position = Position()
        self.precise: Optional[Any] = None
        self.noise: Optional[Any] = None
        self.lock: Optional[lock.RunLock] = None

    @classmethod
    def prepare(
        cls,
        cfg: TrainConfig,
        engine: Engine,
        data: Optional[inputs.DataSpec] = None,
        **parts: Any,
    ) -> TrainingRun:
        """The run of `cfg` on `engine`, checked and built, ready to train.

        `data`: the data's spec, when not the shards `cfg` names (a subclass
        that feeds its own input: see `batches`); `parts` are set on the run
        before it is built (that input).
        """
        run = cls(cfg, engine)
        vars(run).update(parts)
        run._check_folder()
        engine.watch_peers(run.peer_frozen)
        if cfg.data_service:
            from tf_lars.data import service

            service.check_answers(cfg.data_service)
        if data is None:
            data = inputs.spec_of(cfg)
            inputs.check_splits(data, cfg)
        run.data = data
        run.plan = recipe.derive(cfg, run.data, engine.num_replicas_in_sync)
        run.model = run._build_model()
        run.train_data()  # Each worker's pipeline: too few shards fail now.
        run.eval_ds, run.test_ds = run._evaluation_inputs()
        run.precise = run._precise_bn()
        run.noise = run._noise_scale()
        return run

    def _check_folder(self) -> None:
        """The chief locks the run folder (one trainer per folder), then every
        process checks that a run to resume there had these flags."""
        cfg = self.cfg
        if self.engine.chief and not cfg.model_dir:
            raise ValueError("--model_dir is needed: where logs, checkpoints and the model go")
        if cfg.model_dir and self.engine.chief:
            self.lock = lock.RunLock(cfg.model_dir, cfg.force_unlock)
            self.lock.acquire()
            atexit.register(self.close)  # (`close` is the way out; this, the fallback)
        if cfg.model_dir:
            checkpoints.check_resume(cfg.model_dir, cfg.as_flags())

    def close(self) -> None:
        """Gives the run folder up (its lock) for the next trainer; the
        peers stop watching this process."""
        self.engine.stop_watching()
        if self.lock is not None:
            self.lock.release()

    def peer_frozen(self, peer: str, seconds: float) -> None:
        """Ends this process with one line: `peer` sent no heartbeat for
        `seconds` (the engine's `watch_peers`)."""
        backup_dir = os.path.join(self.cfg.model_dir or "", "backup")
        self.close()
        self.engine.exit_with(
            f"{peer} stopped answering (no heartbeat for {seconds:.0f} s); "
            f"{faults.backup_position(backup_dir)} in {backup_dir}: start all "
            f"{self.engine.peers} again with the same command to resume"
        )

    def _build_model(self) -> Any:
        cfg = self.cfg
        if cfg.seed is not None:
            keras.utils.set_random_seed(cfg.seed)
        if cfg.mixed_precision != "none":
            keras.config.set_dtype_policy(cfg.mixed_precision)
        with self.engine.scope():
            self.network = recipe.model(cfg, self.data)
            if cfg.init_weights:
                recipe.load_initial_weights(self.network, cfg.init_weights, cfg.model)
            model = self.trained_model(self.network)
            model.compile(
                **recipe.compile_args(self.plan, cfg),
                jit_compile=self.engine.jit_compile(cfg.jit_compile),
                steps_per_execution=cfg.steps_per_execution,
            )
        return model

    def trained_model(self, network: Any) -> Any:
        """The model that trains `network` (itself; a subclass may wrap it,
        e.g. in on-device augmentation). `network` is the one saved."""
        return network

    def batches(
        self,
        global_batch: int,
        training: bool,
        steps: int,
        split: Optional[str] = None,
        skip_steps: int = 0,
        counts: Optional[BadRecords] = None,
        autotune: bool = True,
    ) -> Any:
        """The distributed input of `split` (default: train or validation)."""
        if self.data.data_format == "synthetic":
            made = self.engine.synthetic_batches(self.data, global_batch, steps, skip_steps)
            if made is not None:
                return made
        service = (
            (self.cfg.data_service, self.cfg.model_dir or "") if self.cfg.data_service else None
        )
        return self.engine.distribute(
            inputs.dataset_fn(
                self.data,
                global_batch,
                training,
                counts or self.bad_records,
                split,
                autotune=autotune,
                skip_steps=skip_steps,
                service=service,
            )
        )

    def train_data(self, skip_steps: int = 0) -> Any:
        """The training input, starting after `skip_steps` global batches."""
        # (A synthetic stream is one pass over the run's remaining steps.)
        plan = self.plan
        return self.batches(
            self.cfg.batch_size,
            True,
            plan.epochs * plan.steps_per_epoch - skip_steps,
            skip_steps=skip_steps,
        )

    def _evaluation_inputs(self) -> tuple[Any, Any]:
        # Iterated afresh at each evaluation: no autotuning (inputs.dataset_fn).
        cfg, plan = self.cfg, self.plan
        return tuple(
            self.batches(plan.eval_batch, False, steps, split, autotune=False) if split else None
            for split, steps in (
                (cfg.eval_split, plan.eval_steps),
                (cfg.test_split, plan.test_steps),
            )
        )  # type: ignore

    def _precise_bn(self) -> Optional[Any]:
        """PreciseBN's callback, recomputing BatchNorm statistics before each
        evaluation, with an input and a counter of its own (its records are
        not counted twice); None when off."""
        steps = self.plan.precise_bn_steps
        if not steps:
            return None
        from tf_lars.training import precise_bn

        pooled = self.batches(
            self.cfg.batch_size, True, steps, counts=BadRecords(), autotune=False
        )
        try:
            with self.engine.scope():
                return precise_bn.PreciseBN(self.network, pooled, steps)
        except ValueError as e:
            raise ValueError(
                f"--precise_bn_images: {e}; use 0 for --model={self.cfg.model}"
            ) from None

    def _noise_scale(self) -> Optional[Any]:
        """`--log_noise_scale`'s callback, measuring on a training stream of
        its own (another order when seeded); None when off."""
        cfg = self.cfg
        if not cfg.log_noise_scale:
            return None
        problem = self.engine.noise_scale_problem()
        if problem:
            raise ValueError(problem)
        from tf_lars import noise_scale

        parts = noise_scale_parts(cfg, self.engine.num_replicas_in_sync)
        return noise_scale.NoiseScale(
            self.noise_batches(),
            micro_batches=parts,
            every_steps=cfg.noise_scale_every_steps,
        )

    def noise_batches(self) -> Iterator[Any]:
        """Global training batches as numpy arrays, for the noise scale (a
        generator: its pipeline is made at the first measurement)."""
        seed = None if self.data.seed is None else self.data.seed + 1
        data = dataclasses.replace(self.data, seed=seed)
        if not has_tensorflow():  # (synthetic data: the only input then)
            yield from inputs.SyntheticBatches(data, self.cfg.batch_size, 1 << 30)
            return
        import tensorflow as tf

        make = inputs.dataset_fn(data, self.cfg.batch_size, True, BadRecords(), autotune=False)
        yield from make(tf.distribute.InputContext()).as_numpy_iterator()

    # Training.

    @property
    def out(self) -> str:
        """Where this process writes: the run folder, or the other workers' scratch."""
        return self.cfg.model_dir if self.engine.chief else self.scratch  # type: ignore

    def callbacks(self) -> list[Any]:
        """The run's callbacks, in the order they must run."""
        cfg, plan = self.cfg, self.plan
        self.scratch = cfg.scratch_dir or tempfile.mkdtemp(prefix="tf_lars_worker_")
        self.nan = monitoring.StopOnNaN()
        self.backup = checkpoints.BackupAndRestore(
            os.path.join(cfg.model_dir or self.scratch, "backup"),
            chief=self.engine.chief,
            every_steps=cfg.backup_every_steps,
            steps_per_epoch=plan.steps_per_epoch,
            mirror_dir=self.engine.backup_mirror_dir(self.scratch),
            position=self.position,
            keep=cfg.keep_backups,
            delete_checkpoint=False,
        )
        self.skipped: Optional[monitoring.SkippedRecords] = None
        self.preemption = faults.Preemption(self.backup, **self.engine.preemption_channel())
        callbacks = [
            self.position,
            self.nan,
            *self._logging(),
            self.backup,
            checkpoints.checkpoint_callback(self.out, self.engine.chief, self.scratch),
            StopAtStep(plan.total_steps, plan.steps_per_epoch, self.position),
        ]
        callbacks += self._monitoring()
        # PreciseBN recomputes BatchNorm statistics when an evaluation begins.
        return callbacks + self.at_eval + [self.preemption]

    @property
    def writes_logs(self) -> bool:
        """The chief writes the logs (under JAX every process runs the same
        callbacks, the others into their scratch folder)."""
        return self.engine.chief or self.engine.callbacks_on_every_process

    def _logging(self) -> list[Any]:
        """The per-epoch table, before the backup: see `keep_backed_up_epochs`."""
        if not self.writes_logs:
            return []
        # Appended to on resume, without the rows of the epochs the backup
        # does not hold. Its row of an epoch is written before the backup
        # that ends the epoch, so a kill between the two repeats the row
        # rather than losing it.
        history = os.path.join(self.out, "history.csv")
        checkpoints.keep_backed_up_epochs(
            history, self.backup.backup_dir, self.plan.steps_per_epoch
        )
        return [keras.callbacks.CSVLogger(history, append=True)]

    def _monitoring(self) -> list[Any]:
        if not self.writes_logs:
            return []
        out, cfg = self.out, self.cfg
        callbacks: list[Any] = []
        if has_tensorflow():  # (both write event files with tf.summary)
            callbacks += [
                monitoring.TensorBoard(out, update_freq=cfg.log_every_steps),
                monitoring.TrainingMonitor(
                    os.path.join(out, "train"),
                    cfg.batch_size,
                    cfg.log_every_steps,
                    self.bad_records,
                ),
            ]
            if self.noise:
                self.noise.log_dir = os.path.join(out, "train")
        else:
            logging.warning(
                "no TensorBoard logs: they are written with TensorFlow, which "
                "is not installed (pip install tensorflow-cpu); history.csv and "
                "summary.json are written"
            )
        self.skipped = monitoring.SkippedRecords(self.bad_records, cfg.eval_split)
        return callbacks + ([self.noise] if self.noise else []) + [self.skipped]

    @property
    def at_eval(self) -> list[Any]:
        return [self.precise] if self.precise else []

    def fit(self, callbacks: list[Any]) -> list[Any]:
        """Trains to the end of the run; the `History` of each `fit` call.

        A backup made inside an epoch resumes there: one `fit` trains the rest
        of that epoch, a second one the epochs after it. Seeded input resumes
        where it stopped (`inputs.dataset_fn`'s `skip_steps`).
        """
        cfg, plan = self.cfg, self.plan
        spe = plan.steps_per_epoch
        epoch, batch = checkpoints.resume_position(self.backup.backup_dir, spe)
        args = dict(
            validation_data=self.eval_ds if cfg.eval_every_epochs else None,
            validation_steps=plan.eval_steps,
            validation_freq=max(1, cfg.eval_every_epochs),
            callbacks=callbacks,
            verbose=cfg.verbose,
            shuffle=False,
        )  # tf.data shuffles
        histories = []
        if batch and epoch < plan.epochs:
            self.position.resume_inside(batch)
            histories.append(
                self.model.fit(
                    self.train_data(epoch * spe + batch),
                    initial_epoch=epoch,
                    epochs=epoch + 1,
                    steps_per_epoch=spe - batch,
                    **args,
                )
            )
            epoch += 1
            if self.model.stop_training or epoch >= plan.epochs:
                return histories
        # steps_per_epoch is always given: without it Keras can advance the
        # iteration count once more per epoch, shifting step-based schedules.
        histories.append(
            self.model.fit(
                self.train_data(epoch * spe),
                initial_epoch=epoch,
                epochs=plan.epochs,
                steps_per_epoch=spe,
                **args,
            )
        )
        return histories

    def save_config(self) -> None:
        """`flags.json`: every flag's final value, what was derived, the data."""
        with open(os.path.join(self.out, "flags.json"), "w") as f:
            json.dump(
                {
                    "flags": self.cfg.as_flags(),
                    "derived": self.plan.as_dict(),
                    "data": vars(self.data),
                },
                f,
                indent=2,
                default=str,
            )

    def log_plan(self) -> None:
        cfg, plan = self.cfg, self.plan
        logging.info("%s", self.engine.describe())
        logging.info(
            "%d replicas, global batch %d (%d each), %d steps (%d per epoch, "
            "%d warmup), peak learning rate %.4g",
            plan.replicas,
            cfg.batch_size,
            plan.per_replica_batch,
            plan.total_steps,
            plan.steps_per_epoch,
            plan.warmup_steps,
            plan.peak_learning_rate,
        )
        evaluated = plan.eval_steps * plan.eval_batch
        if evaluated != self.data.eval_examples:
            logging.warning(
                "evaluation runs whole batches of --eval_batch_size=%d: %d images, "
                "not --eval_examples=%d (past the split's end its first images "
                "count again); a batch size that divides it evaluates it exactly",
                plan.eval_batch,
                evaluated,
                self.data.eval_examples,
            )

    def train(self) -> tuple[list[Any], float]:
        """Trains (or resumes) to the end; the histories and the seconds taken."""
        callbacks = self.callbacks()
        os.makedirs(self.out, exist_ok=True)
        if self.engine.chief:
            self.save_config()
        self.log_plan()
        start = time.time()
        histories = self.fit(callbacks)
        return histories, time.time() - start

    def explain(self, error: BaseException) -> Optional[str]:
        """The one line for `error` if the user can act on it (`faults.explain`)."""
        return faults.explain(
            error, self.data, self.engine, self.bad_records, self.backup.backup_dir
        )

    # The report.

    def final_figures(self, histories: list[Any], epochs: list[int]) -> dict[str, float]:
        """The final model's top-1, top-5 and loss on the evaluation split."""
        freq = self.cfg.eval_every_epochs
        history = histories[-1] if histories[-1].epoch else histories[0]
        if freq and epochs and (epochs[-1] + 1) % freq == 0:
            # The last epoch was validated: the final model's figures are those.
            return {k: history.history[f"val_{k}"][-1] for k in ("accuracy", "top5", "loss")}
        result: dict[str, float] = self.model.evaluate(
            self.eval_ds,
            steps=self.plan.eval_steps,
            return_dict=True,
            verbose=0,
            callbacks=self.at_eval + ([self.skipped] if self.skipped else []),
        )
        return result

    def summarize(self, histories: list[Any], seconds: float) -> Optional[Summary]:
        """The run's `Summary` (None when the folder held a finished run)."""
        epochs = [e for h in histories for e in h.epoch]
        backup, bad = self.backup, self.bad_records
        if backup.resumed_from_epoch is not None and not epochs:
            return None
        results = self.final_figures(histories, epochs)
        steps = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        summary = Summary(
            top1=results["accuracy"],
            top5=results["top5"],
            loss=results["loss"],
            steps=steps,
            eval_split=self.cfg.eval_split,
            wall_seconds=seconds,
            wall_seconds_in_all=backup.seconds_in_all(seconds),
            images_per_second=(steps - backup.resumed_at_step) * self.cfg.batch_size / seconds,
            epochs_run=len(epochs),
            backend=keras.backend.backend(),
            machine=machine(),
            resumed_from_epoch=backup.resumed_from_epoch,
            skipped_records=bad.result(),
            skipped_by_split={k: bad.result(k) for k in bad.splits},
            noise_scale=self.noise_summary(),
        )
        if self.test_ds is not None:
            tested = self.model.evaluate(
                self.test_ds, steps=self.plan.test_steps, return_dict=True, verbose=0
            )
            summary.test_split = self.cfg.test_split
            summary.test_top1, summary.test_top5 = tested["accuracy"], tested["top5"]
            summary.test_loss = tested["loss"]
        return summary

    def noise_summary(self) -> Optional[dict[str, Any]]:
        """`summary.json`'s `noise_scale` (see `Summary`), or None when off."""
        noise = self.noise
        if noise is None:
            return None

        def number(value: float) -> Optional[float]:
            return None if math.isnan(value) else value  # JSON has no nan

        rows = [[h["step"], h["b_simple"], h["gradient_sq"], h["trace"]] for h in noise.history]
        return dict(
            {k: number(v) for k, v in noise.result().items()},
            micro_batches=noise.micro_batches,
            every_steps=noise.every_steps,
            curve=[[number(v) for v in row] for row in rows],
        )

    def finish(self, histories: list[Any], seconds: float) -> None:
        """Final evaluation, summary, model and the run's last line."""
        if self.nan.message:
            sys.exit(f"tf-lars-train: training stopped: {self.nan.message}")
        summary = self.summarize(histories, seconds)
        if summary is None:
            print(
                f"tf-lars-train: --model_dir {self.out} holds this run, already finished "
                f"({self.backup.resumed_at_step} steps); its model and summary are kept. "
                "Give a new --model_dir to train again."
            )
            return
        checkpoints.save_through_rename(os.path.join(self.out, "model.keras"), self.network.save)
        if self.engine.chief:
            summary.write(self.out)
        print(self.last_line(summary), flush=True)

    def last_line(self, summary: Summary) -> str:
        cfg, plan = self.cfg, self.plan
        skipped = self.skipped
        dropped = f" ({skipped.last_eval} skipped)" if skipped and skipped.last_eval else ""
        bad = self.bad_records
        train_skips = bad.describe("train") if "train" in bad.splits else ""
        return (
            f"tf-lars-train: {cfg.model} on {cfg.data_format}: top-1 {summary.top1:.4f}, "
            f"top-5 {summary.top5:.4f} on {plan.eval_steps * plan.eval_batch} "
            f"{cfg.eval_split} images{dropped}; "
            + (
                f"test top-1 {summary.test_top1:.4f} on {cfg.test_split}; "
                if summary.test_split
                else ""
            )
            + f"{summary.steps} steps at batch {cfg.batch_size}; {summary.wall_seconds:.0f} s, "
            f"{summary.images_per_second:.0f} images/s; "
            + (f"skipped in train: {train_skips}; " if train_skips else "")
            + f"logs: tensorboard --logdir {self.out}"
        )
