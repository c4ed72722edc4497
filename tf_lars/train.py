"""tf-lars-train: train an image classifier with LARS under tf.distribute,
or under JAX with keras.distribution (KERAS_BACKEND=jax).

    tf-lars-train --flagfile=fashion_mnist --data_dir=data/fashion_mnist
    python -m tf_lars.train --flagfile=flags/resnet50_lars_32k.cfg --data_dir=gs://...
    KERAS_BACKEND=jax tf-lars-train --flagfile=resnet50_lars_32k --data_dir=gs://...

`--flagfile` takes a path or the short name of a file in `flags/`
(`resnet50_lars_32k`); flagfiles may include others by the same rule.
Writes to `--model_dir` (chief only): `flags.json` (every flag and the
derived values), TensorBoard logs, `checkpoint.keras` each epoch, `backup/`
(resumes a preempted run), `model.keras` and `summary.json` at the end.

Exit status: 0 when trained (or already finished); 75 when stopped by
SIGTERM after backing up (run the same command to resume); 1 with one
`tf-lars-train: error:` line for bad flags, bad data or a lost worker.

This file only reads the flags and drives a `training.run.TrainingRun` on
the engine of the Keras backend (`training.engines`).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's C++ INFO lines

from absl import app, flags

from tf_lars.training import config, flagfiles
from tf_lars.training import flags as train_flags

train_flags.define()
FLAGS = flags.FLAGS


def prepare(cfg):
    """The engine and the run, or one error line for bad flags or data."""
    from tf_lars.training import engines
    from tf_lars.training.run import TrainingRun, check_config

    try:
        check_config(cfg)
        engine = engines.make(cfg)
        return engine, TrainingRun.prepare(cfg, engine)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"tf-lars-train: error: {e}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from tf_lars.training import backups, faults

    engine, run = prepare(config.from_flags(FLAGS))
    try:
        histories, seconds = run.train()
        stopped = run.preemption.stopped_at
        if stopped is not None:
            print(
                f"tf-lars-train: stopped by SIGTERM at step {stopped}; backed up in "
                f"{run.backup.backup_dir}: run the same command to resume there",
                flush=True,
            )
            sys.exit(faults.PREEMPTED_EXIT_CODE)
        run.finish(histories, seconds)
    except (*engine.op_errors(), backups.BackupError, OSError) as e:
        # Input and worker faults, a write that failed (a full disk).
        line = run.explain(e)
        if line is None:
            raise
        run.close()
        engine.exit_with(line)
    finally:
        run.close()


def run():
    """Console entry point: expands short flagfile names, then runs `main`."""
    app.run(main, argv=flagfiles.expand(sys.argv))


if __name__ == "__main__":
    run()
