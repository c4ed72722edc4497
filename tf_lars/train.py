"""tf-lars-train: train an image classifier with LARS under tf.distribute,
or under JAX with keras.distribution (KERAS_BACKEND=jax; see engine.py).

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
"""

import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's C++ INFO lines

from absl import app, flags, logging

from tf_lars.training import flags as train_flags
from tf_lars.training import flagfiles

train_flags.define()
FLAGS = flags.FLAGS


def load_initial_weights(model, path):
    import keras

    if not os.path.exists(path):
        raise FileNotFoundError(f"--init_weights={path}: no such file")
    try:
        if path.endswith(".keras"):
            model.set_weights(keras.models.load_model(path, compile=False).get_weights())
        else:
            model.load_weights(path)
    except ValueError as e:
        raise ValueError(f"--init_weights={path} does not fit --model={FLAGS.model} "
                         f"with these flags: {str(e).splitlines()[0]}") from None


def check_size(split, files, data):
    """Warns when the flags' size of `split` is far from its shards' (estimated)."""
    from tf_lars.data import pipeline

    flag, given = (("train_examples", data.train_examples) if split == "train" else
                   ("eval_examples", data.eval_examples))
    estimate = pipeline.estimate_records(files)
    if estimate and not estimate / 1.5 <= given <= estimate * 1.5:
        source = "" if FLAGS[flag].present else f" (the {data.data_format} default)"
        print(f"tf-lars-train: warning: --{flag}={given}{source}, but the {split} shards hold "
              f"about {estimate:,} records (estimated from their size): pass --{flag} with "
              "the split's size, or an epoch and the schedule will not mean what they say",
              file=sys.stderr, flush=True)


def setup():
    """Everything that can fail on bad flags or data, before any training."""
    import keras

    from tf_lars.data.counts import BadRecords
    from tf_lars.training import checkpoints, engine, inputs, recipe

    if FLAGS.deterministic and FLAGS.seed is None:
        raise ValueError("--deterministic needs --seed: give both, e.g. --seed=1")
    on_jax = engine.backend() == "jax"
    if on_jax:
        strategy = engine.JaxEngine(
            FLAGS.strategy, FLAGS.cpu_devices, FLAGS.coordinator_address, FLAGS.num_processes,
            FLAGS.process_id, FLAGS.deterministic, FLAGS.tpu)
        chief = strategy.chief
        logging.info("%s", strategy.describe())
    else:
        from tf_lars.training import keras_mwms, strategy as strategies

        if FLAGS.strategy == "multi_worker_mirrored" or os.environ.get("TF_CONFIG"):
            keras_mwms.apply()
        if FLAGS.deterministic:
            strategies.make_deterministic()
        strategies.split_cpu(FLAGS.cpu_devices)
        strategy = strategies.make(FLAGS.strategy, FLAGS.tpu, FLAGS.collective_communication)
        chief = strategies.is_chief(strategy)
    if chief and not FLAGS.model_dir:
        raise ValueError("--model_dir is needed: where logs, checkpoints and the model go")
    if FLAGS.model_dir:
        checkpoints.check_resume(FLAGS.model_dir, flag_values())
    data = inputs.spec(
        FLAGS.data_format, FLAGS.data_dir, image_size=FLAGS.image_size,
        channels=FLAGS.channels, num_classes=FLAGS.num_classes, preset=FLAGS.preset,
        train_examples=FLAGS.train_examples, eval_examples=FLAGS.eval_examples,
        label_offset=FLAGS.label_offset, strict=FLAGS.strict_data,
        eval_split=FLAGS.eval_split,
        cache_eval=FLAGS.cache_eval, shuffle_buffer=FLAGS.shuffle_buffer, seed=FLAGS.seed)
    if data.data_format != "synthetic":
        from tf_lars.data import pipeline

        splits = ["train", FLAGS.eval_split] + ([FLAGS.test_split] if FLAGS.test_split else [])
        for split in splits:  # Missing shards fail now, not mid-run.
            files = pipeline.list_files(data.data_dir, split, data.schema)
            if data.data_format != "tfds" and split in ("train", FLAGS.eval_split):
                check_size(split, files, data)
    d = recipe.derive(FLAGS, data, strategy.num_replicas_in_sync)
    if FLAGS.seed is not None:
        keras.utils.set_random_seed(FLAGS.seed)
    if FLAGS.mixed_precision != "none":
        keras.config.set_dtype_policy(FLAGS.mixed_precision)
    bad_records = BadRecords()  # Outside the scope: host variables.
    with strategy.scope():
        model = recipe.model(FLAGS, data)
        if FLAGS.init_weights:
            load_initial_weights(model, FLAGS.init_weights)
        # Under JAX the step is always compiled (eager JAX runs op by op).
        model.compile(**recipe.compile_args(d, FLAGS), jit_compile=on_jax or FLAGS.jit_compile,
                      steps_per_execution=FLAGS.steps_per_execution)
    # Under JAX, synthetic data comes from numpy (no TensorFlow needed);
    # each process makes its own rows of every global batch.
    synthetic = on_jax and data.data_format == "synthetic"

    def batches(global_batch, training, steps, split=None, skip_steps=0, counts=bad_records,
                autotune=True):
        if synthetic:
            return inputs.SyntheticBatches(data, global_batch, steps, strategy.process_id,
                                           strategy.num_processes, skip_steps)
        return strategy.distribute_datasets_from_function(inputs.dataset_fn(
            data, global_batch, training, counts, split, autotune=autotune,
            skip_steps=skip_steps))

    def train_data(skip_steps=0):
        """The training input, starting after `skip_steps` global batches."""
        # (A synthetic stream is one pass over the run's remaining steps.)
        return batches(FLAGS.batch_size, True, d["epochs"] * d["steps_per_epoch"] - skip_steps,
                       skip_steps=skip_steps)

    # Each worker's pipeline is built here, so too few shards fail before training.
    train_data()
    # Evaluation and PreciseBN pipelines are iterated afresh each time: no
    # autotuning (see inputs.dataset_fn).
    eval_ds, test_ds = (batches(d["eval_batch"], False, steps, split, autotune=False)
                        if split else None
                        for split, steps in ((FLAGS.eval_split, d["eval_steps"]),
                                             (FLAGS.test_split, d["test_steps"])))
    precise = None
    if d["precise_bn_steps"]:
        from tf_lars.training import precise_bn

        # A pipeline and counter of its own: its records are not counted twice.
        bn_ds = batches(FLAGS.batch_size, True, d["precise_bn_steps"], counts=BadRecords(),
                        autotune=False)
        try:
            with strategy.scope():
                precise = precise_bn.PreciseBN(model, bn_ds, d["precise_bn_steps"])
        except ValueError as e:
            raise ValueError(f"--precise_bn_images: {e}; use 0 for --model={FLAGS.model}") \
                from None
    return strategy, chief, data, d, model, train_data, (eval_ds, test_ds), bad_records, precise


def callbacks_for(chief, bad_records, d):
    import keras

    from tf_lars import monitoring
    from tf_lars.training import checkpoints, engine

    scratch = FLAGS.scratch_dir or tempfile.mkdtemp(prefix="tf_lars_worker_")
    out = FLAGS.model_dir if chief else scratch
    nan = monitoring.StopOnNaN()
    mirror = os.path.join(scratch, "backup") if engine.backend() == "jax" else None
    backup = checkpoints.BackupAndRestore(
        os.path.join(FLAGS.model_dir or scratch, "backup"), chief=chief,
        every_steps=FLAGS.backup_every_steps, steps_per_epoch=d["steps_per_epoch"],
        mirror_dir=mirror, delete_checkpoint=False)
    stopper = monitoring.StopAtStep(d["total_steps"], d["steps_per_epoch"])
    callbacks = [nan, backup, checkpoints.checkpoint_callback(out, chief, scratch), stopper]
    # TensorBoard: the chief alone, except under JAX with several processes,
    # where every process must run the same callbacks (reading the model's
    # state between steps is a collective there); the others write to scratch.
    if chief or engine.backend() == "jax":
        # Per-epoch metrics as a table; appended to on resume, without the
        # rows of the epochs the backup does not hold. Its row of an epoch is
        # written before the backup that ends the epoch, so a kill between
        # the two repeats the row rather than losing it.
        history = os.path.join(out, "history.csv")
        checkpoints.keep_backed_up_epochs(history, backup.backup_dir, d["steps_per_epoch"])
        table = keras.callbacks.CSVLogger(history, append=True)
        callbacks.insert(callbacks.index(backup), table)
        if engine.has_tensorflow():  # (both write event files with tf.summary)
            callbacks += [keras.callbacks.TensorBoard(out, update_freq=FLAGS.log_every_steps),
                          monitoring.TrainingMonitor(os.path.join(out, "train"),
                                                     FLAGS.batch_size, FLAGS.log_every_steps,
                                                     bad_records)]
        else:
            logging.warning("no TensorBoard logs: they are written with TensorFlow, which "
                            "is not installed (pip install tensorflow-cpu); history.csv and "
                            "summary.json are written")
        callbacks.append(monitoring.SkippedRecords(bad_records, FLAGS.eval_split))
    return callbacks, nan, backup, stopper, out


def flag_values():
    """`{name: value}` of every training flag."""
    return {f.name: f.value for f in FLAGS.flags_by_module_dict().get(train_flags.__name__, [])}


def save_config(out, d, data):
    """The final value of every training flag, and what was derived from them."""
    with open(os.path.join(out, "flags.json"), "w") as f:
        json.dump({"flags": flag_values(), "derived": d, "data": vars(data)}, f, indent=2,
                  default=str)


def fit(model, train_data, d, callbacks, eval_ds, backup, stopper):
    """Trains to the end of the run; the `History` of each `fit` call.

    A backup made inside an epoch resumes there: one `fit` trains the rest
    of that epoch, a second one the epochs after it. Seeded input resumes
    where it stopped (`inputs.dataset_fn`'s `skip_steps`).
    """
    from tf_lars.training import checkpoints

    spe = d["steps_per_epoch"]
    epoch, batch = checkpoints.resume_position(backup.backup_dir, spe)
    args = dict(validation_data=eval_ds if FLAGS.eval_every_epochs else None,
                validation_steps=d["eval_steps"],
                validation_freq=max(1, FLAGS.eval_every_epochs), callbacks=callbacks,
                verbose=FLAGS.verbose, shuffle=False)  # tf.data shuffles
    histories = []
    if batch and epoch < d["epochs"]:
        backup.first_batch = stopper.first_batch = batch
        histories.append(model.fit(train_data(epoch * spe + batch), initial_epoch=epoch,
                                   epochs=epoch + 1, steps_per_epoch=spe - batch, **args))
        epoch += 1
        if model.stop_training or epoch >= d["epochs"]:
            return histories
    # steps_per_epoch is always given: without it Keras can advance the
    # iteration count once more per epoch, shifting step-based schedules.
    histories.append(model.fit(train_data(epoch * spe), initial_epoch=epoch,
                               epochs=d["epochs"], steps_per_epoch=spe, **args))
    return histories


def explain(error, data, strategy, bad, backup_dir):
    """The one line for an error the user can act on, or None."""
    from tf_lars.training import checkpoints, engine, faults

    line = None
    if data.data_format != "synthetic" or engine.backend() != "jax":
        from tf_lars.data import pipeline

        offset = data.label_offset
        if offset is None:
            from tf_lars.data import schema

            offset = schema.get(data.schema).label_offset
        line = pipeline.explain(error, data.data_dir, data.num_classes, offset, bad)
    if line:
        return line
    if engine.backend() == "jax":
        if strategy.num_processes == 1:
            return None
        peer, peers = "process", "processes"
        lost = faults.worker_failure(error, f"process {strategy.process_id}")
    else:
        from tf_lars.training import strategy as strategies

        if not strategies.is_multi_worker(strategy):
            return None
        peer, peers = "worker", "workers"
        lost = faults.worker_failure(error, strategies.task_name(strategy))
    if lost is None:
        return None
    saved = checkpoints.read_backup(backup_dir)
    where = (f"the last backup is at step {saved['step']} (epoch {saved['epoch'] + 1}"
             f"{', batch %d' % saved['batch'] if saved.get('batch') else ''})"
             if saved and "step" in saved else "no backup was made yet")
    return (f"{lost or 'another ' + peer} stopped answering ({type(error).__name__}); "
            f"{where} in {backup_dir}: start all {peers} again with the same command "
            "to resume")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from tf_lars.training import engine, faults

    try:
        strategy, chief, data, d, model, train_data, (eval_ds, test_ds), bad, precise = setup()
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"tf-lars-train: error: {e}")
    callbacks, nan, backup, stopper, out = callbacks_for(chief, bad, d)
    coordination = sync_point = None
    if engine.backend() == "jax":
        sync_point = strategy.preemption_sync_point()
    else:
        from tf_lars.training import strategy as strategies

        coordination = strategies.coordination(strategy)
    preemption = faults.Preemption(backup, coordination, sync_point=sync_point)
    # Input and worker faults surface as TensorFlow's errors (tf.data,
    # collectives), and under JAX a lost process as JAX's runtime error.
    op_errors = ()
    if engine.has_tensorflow():
        import tensorflow as tf

        op_errors = (tf.errors.OpError,)
    if engine.backend() == "jax":
        op_errors += (engine.jax_runtime_error(),)
    skipped = next((c for c in callbacks if c.__class__.__name__ == "SkippedRecords"), None)
    # PreciseBN recomputes BatchNorm statistics when an evaluation begins.
    at_eval = [precise] if precise else []
    os.makedirs(out, exist_ok=True)
    if chief:
        save_config(out, d, data)
    logging.info("%d replicas, global batch %d (%d each), %d steps (%d per epoch, "
                 "%d warmup), peak learning rate %.4g", d["replicas"], FLAGS.batch_size,
                 d["per_replica_batch"], d["total_steps"], d["steps_per_epoch"],
                 d["warmup_steps"], d["peak_learning_rate"])
    evaluated = d["eval_steps"] * d["eval_batch"]
    if evaluated != data.eval_examples:
        logging.warning("evaluation runs whole batches of --eval_batch_size=%d: %d images, "
                        "not --eval_examples=%d (past the split's end its first images "
                        "count again); a batch size that divides it evaluates it exactly",
                        d["eval_batch"], evaluated, data.eval_examples)
    start = time.time()
    try:
        histories = fit(model, train_data, d, callbacks + at_eval + [preemption], eval_ds,
                        backup, stopper)
        seconds = time.time() - start
        if preemption.stopped_at is not None:
            print(f"tf-lars-train: stopped by SIGTERM at step {preemption.stopped_at}; backed "
                  f"up in {backup.backup_dir}: run the same command to resume there",
                  flush=True)
            sys.exit(faults.PREEMPTED_EXIT_CODE)
        finish(model, histories, seconds, d, data, nan, backup, bad, at_eval, eval_ds,
               test_ds, chief, out, skipped)
    except op_errors as e:
        line = explain(e, data, strategy, bad, backup.backup_dir)
        if line is None:
            raise
        if engine.backend() == "jax" and strategy.num_processes > 1:
            # At exit jax.distributed would wait for the lost process until
            # its heartbeat times out (about 100 s), then abort with a stack
            # dump: leave now, the backups being written already.
            print(f"tf-lars-train: error: {line}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(1)
        sys.exit(f"tf-lars-train: error: {line}")


def finish(model, histories, seconds, d, data, nan, backup, bad, at_eval, eval_ds, test_ds,
           chief, out, skipped):
    """Final evaluation, summary, model and the run's last line."""
    from tf_lars.training import engine

    if nan.message:
        sys.exit(f"tf-lars-train: training stopped: {nan.message}")
    epochs = [e for h in histories for e in h.epoch]
    if backup.resumed_from_epoch is not None and not epochs:
        print(f"tf-lars-train: --model_dir {out} holds this run, already finished "
              f"({backup.resumed_at_step} steps); its model and summary are kept. "
              "Give a new --model_dir to train again.")
        return
    history = histories[-1] if histories[-1].epoch else histories[0]
    freq = FLAGS.eval_every_epochs
    if freq and epochs and (epochs[-1] + 1) % freq == 0:
        # The last epoch was validated: the final model's figures are those.
        results = {k: history.history[f"val_{k}"][-1] for k in ("accuracy", "top5", "loss")}
    else:
        results = model.evaluate(eval_ds, steps=d["eval_steps"], return_dict=True, verbose=0,
                                 callbacks=at_eval + ([skipped] if skipped else []))
    steps = int(model.optimizer.iterations.numpy())
    trained = steps - backup.resumed_at_step
    summary = dict(top1=results["accuracy"], top5=results["top5"], loss=results["loss"],
                   steps=steps, resumed_from_epoch=backup.resumed_from_epoch,
                   wall_seconds=seconds, wall_seconds_in_all=backup.seconds_in_all(seconds),
                   images_per_second=trained * FLAGS.batch_size / seconds,
                   skipped_records=bad.result(), epochs_run=len(epochs),
                   skipped_by_split={k: bad.result(k) for k in bad.splits},
                   eval_split=FLAGS.eval_split, machine=engine.machine())
    if test_ds is not None:
        tested = model.evaluate(test_ds, steps=d["test_steps"], return_dict=True, verbose=0)
        summary.update(test_split=FLAGS.test_split, test_top1=tested["accuracy"],
                       test_top5=tested["top5"], test_loss=tested["loss"])
    model.save(os.path.join(out, "model.keras"))
    if chief:
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    dropped = f" ({skipped.last_eval} skipped)" if skipped and skipped.last_eval else ""
    train_skips = bad.describe("train") if "train" in bad.splits else ""
    print(f"tf-lars-train: {FLAGS.model} on {FLAGS.data_format}: top-1 {summary['top1']:.4f}, "
          f"top-5 {summary['top5']:.4f} on {d['eval_steps'] * d['eval_batch']} "
          f"{FLAGS.eval_split} images{dropped}; "
          + (f"test top-1 {summary['test_top1']:.4f} on {FLAGS.test_split}; "
             if test_ds is not None else "") +
          f"{steps} steps at batch {FLAGS.batch_size}; {seconds:.0f} s, "
          f"{summary['images_per_second']:.0f} images/s; "
          + (f"skipped in train: {train_skips}; " if train_skips else "") +
          f"logs: tensorboard --logdir {out}")


def run():
    """Console entry point: expands short flagfile names, then runs `main`."""
    app.run(main, argv=flagfiles.expand(sys.argv))


if __name__ == "__main__":
    run()
