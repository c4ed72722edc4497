"""Every flag of the training program, defined here and nowhere else.

Library code never reads FLAGS: `tf_lars.train` turns them into a typed
`config.TrainConfig` once (a field for each flag, of the same name).
Experiments live in flagfiles (`flags/*.cfg`, `--flagfile=`); a value left
unset (None) takes the data format's default.
"""

import functools

from absl import flags

FORMATS = ("imagenet", "tfds", "fashion_mnist", "synthetic")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker_mirrored", "tpu")
COLLECTIVES = ("auto", "ring", "nccl")  # tf.distribute's CommunicationImplementation


class _Definer:
    """absl's DEFINE_* functions, bound to one `FlagValues`."""

    def __init__(self, flag_values):
        self.flag_values = flag_values

    def __getattr__(self, name):
        return functools.partial(getattr(flags, name), flag_values=self.flag_values)


def define(flag_values=flags.FLAGS):
    """Defines the flags in `flag_values` (once; default: absl's FLAGS).

    A separate `flags.FlagValues()` parses the trainer's flags inside
    another program without touching its own (tools/large_batch_study.py).
    """
    if "model" in flag_values:
        return
    d = _Definer(flag_values)
    # Model and data.
    d.DEFINE_enum(
        "model",
        "resnet50",
        ["resnet50", "alexnet_bn", "resnet8", "resnet20", "resnet32", "resnet56"],
        "Model to train.",
    )
    d.DEFINE_boolean(
        "zero_init_residual",
        True,
        "Start each residual block's last BatchNorm gamma at 0 (Goyal et al.).",
    )
    d.DEFINE_string("data_dir", None, "Folder of TFRecord shards (not for synthetic data).")
    d.DEFINE_string(
        "data_service",
        None,
        "HOST:PORT of a tf.data service dispatcher (tools/data_service.py): its "
        "workers decode the training shards (read by the same --data_dir path) and "
        "the trainer reads finished batches. Evaluation stays here.",
    )
    d.DEFINE_enum(
        "data_format",
        "imagenet",
        FORMATS,
        "imagenet: standard ImageNet shards; tfds: TFDS imagenet2012 shards; "
        "fashion_mnist: shards from tools/build_fashion_mnist_tfrecords.py; "
        "synthetic: random images made in memory (benchmarks).",
    )
    d.DEFINE_integer("image_size", None, "Input size (default: 224, or 28 for fashion_mnist).")
    d.DEFINE_integer("num_classes", None, "Classes (default: 1000, or 10 for fashion_mnist).")
    d.DEFINE_integer("channels", None, "Image channels (default: 3, or 1 for fashion_mnist).")
    d.DEFINE_string(
        "preset",
        None,
        "Preprocessing preset: tpu, legacy or small (default: tpu, or small for fashion_mnist).",
    )
    d.DEFINE_integer(
        "label_offset",
        None,
        "Subtracted from stored labels (default: the format's, 1 for ImageNet-schema shards).",
    )
    d.DEFINE_integer("train_examples", None, "Training set size (default: the format's).")
    d.DEFINE_integer("eval_examples", None, "Evaluation set size (default: the format's).")
    d.DEFINE_string(
        "eval_split",
        "validation",
        "Split evaluated during and after "
        "training (e.g. holdout: a held-out part of the training set).",
    )
    d.DEFINE_string(
        "test_split",
        None,
        "Also evaluate the final model on this split, "
        "reported apart (e.g. validation when --eval_split=holdout).",
    )
    d.DEFINE_integer(
        "test_examples", None, "Size of --test_split (default: the format's evaluation set size)."
    )
    d.DEFINE_boolean(
        "strict_data",
        False,
        "Stop at bad input, naming the shard, instead of skipping and counting it.",
    )
    d.DEFINE_boolean("cache_eval", False, "Keep the decoded evaluation set in memory.")
    d.DEFINE_integer("shuffle_buffer", 10_000, "Records in the training shuffle buffer.")
    # Batch, length, schedule.
    d.DEFINE_integer("batch_size", 256, "Global batch size (all replicas together).")
    d.DEFINE_integer(
        "eval_batch_size",
        None,
        "Global evaluation batch (default: "
        "--batch_size); one that divides the evaluation set counts each "
        "image once.",
    )
    d.DEFINE_float("epochs", None, "Epochs to train (or --train_steps).")
    d.DEFINE_integer("train_steps", None, "Optimizer steps to train (overrides --epochs).")
    d.DEFINE_enum(
        "optimizer",
        "lars",
        ["lars", "sgd", "nesterov"],
        "lars, or momentum SGD (sgd) or Nesterov momentum (nesterov) with the "
        "same coupled weight decay and exclusions.",
    )
    d.DEFINE_float("learning_rate", None, "Peak learning rate (overrides the scaling rule).")
    d.DEFINE_float(
        "base_learning_rate",
        0.1,
        "Peak rate at --base_batch_size, scaled linearly with --batch_size.",
    )
    d.DEFINE_integer("base_batch_size", 256, "Batch size that --base_learning_rate is for.")
    d.DEFINE_float("warmup_epochs", 5.0, "Epochs of linear warmup from 0.")
    d.DEFINE_enum("schedule", "poly", ["poly", "cosine", "step"], "Decay after warmup.")
    d.DEFINE_float("poly_power", 2.0, "Power of the polynomial decay.")
    d.DEFINE_float("end_learning_rate", 0.0, "Rate at the last step (poly, cosine).")
    d.DEFINE_list("step_epochs", ["30", "60", "80"], "Epochs where step decay divides by 10.")
    d.DEFINE_float("momentum", 0.9, "Momentum.")
    d.DEFINE_float("weight_decay", 1e-4, "Coupled weight decay (rank >= 2 variables).")
    d.DEFINE_float("trust_coefficient", 0.001, "LARS's eta.")
    d.DEFINE_enum("trust_ratio", "paper", ["paper", "decayed_gradient"], "LARS's ratio form.")
    d.DEFINE_boolean(
        "clip_trust_ratio",
        False,
        "LARC's clip: each layer's rate at most the "
        "global one (trust ratio / learning rate capped at 1).",
    )
    d.DEFINE_list(
        "exclude_from_weight_decay",
        None,
        "Regexes of variable paths without "
        "weight decay (default: every variable of rank <= 1: biases, BatchNorm).",
    )
    d.DEFINE_list(
        "exclude_from_layer_adaptation",
        None,
        "Regexes of variable paths LARS "
        "does not adapt (default: as --exclude_from_weight_decay, else rank <= 1).",
    )
    d.DEFINE_float("label_smoothing", 0.0, "Label smoothing.")
    d.DEFINE_string(
        "init_weights",
        None,
        "Start from these weights (a .weights.h5 "
        "or .keras file of the same model) instead of a fresh initialization.",
    )
    d.DEFINE_integer("seed", None, "Seed of initialization and data order (None: random).")
    d.DEFINE_boolean(
        "deterministic",
        False,
        "Bitwise-repeatable runs (needs --seed): "
        "TensorFlow's deterministic ops, one op at a time on one thread (its "
        "multi-threaded CPU backward kernels otherwise add partial sums in the "
        "order threads finish). Much slower on multi-core CPUs.",
    )
    # Distribution and speed.
    d.DEFINE_enum(
        "strategy",
        "auto",
        list(STRATEGIES),
        "tf.distribute strategy (KERAS_BACKEND=tensorflow); under KERAS_BACKEND=jax "
        "auto (keras.distribution.DataParallel over every device) or one_device.",
    )
    d.DEFINE_string("tpu", None, "TPU name or address (--strategy=tpu or auto).")
    d.DEFINE_enum(
        "collective_communication",
        "auto",
        list(COLLECTIVES),
        "All-reduce of multi_worker_mirrored.",
    )
    d.DEFINE_integer(
        "cpu_devices",
        1,
        "Split the CPU into this many logical devices "
        "(for mirrored runs and tests on machines without GPUs).",
    )
    d.DEFINE_string(
        "coordinator_address",
        None,
        "JAX, several processes: host:port of "
        "process 0 (with --num_processes, --process_id; else Keras's "
        "KERAS_DISTRIBUTION_* environment variables).",
    )
    d.DEFINE_integer("num_processes", None, "JAX: processes (hosts) of the run.")
    d.DEFINE_integer("process_id", None, "JAX: this process's index, 0 for the chief.")
    d.DEFINE_enum(
        "mixed_precision",
        "none",
        ["none", "mixed_float16", "mixed_bfloat16"],
        "Keras dtype policy.",
    )
    d.DEFINE_boolean("jit_compile", False, "Compile the train step with XLA.")
    d.DEFINE_integer(
        "gradient_accumulation_steps",
        None,
        "Apply the summed gradients every k steps (batch x k).",
    )
    d.DEFINE_integer("steps_per_execution", 1, "Train steps per tf.function call.")
    # Output and monitoring.
    d.DEFINE_string(
        "model_dir",
        None,
        "Where TensorBoard logs, checkpoints and the final model go (only the chief writes here).",
    )
    d.DEFINE_string(
        "scratch_dir", None, "Where non-chief workers write (default: a temporary folder)."
    )
    d.DEFINE_boolean("log_trust_ratios", False, "Log LARS's per-layer trust ratios.")
    d.DEFINE_boolean(
        "log_noise_scale",
        False,
        "Measure the gradient noise scale B_simple (McCandlish et al. 2018) while "
        "training: TensorBoard's noise_scale/ charts and summary.json's noise_scale.",
    )
    d.DEFINE_integer(
        "noise_scale_every_steps",
        100,
        "With --log_noise_scale: steps between measurements (each costs about one step).",
        lower_bound=1,
    )
    d.DEFINE_integer(
        "noise_scale_micro_batches",
        0,
        "With --log_noise_scale: parts a batch is cut into, >= 2, dividing "
        "--batch_size (0: the replicas, at least 4).",
        lower_bound=0,
    )
    d.DEFINE_integer(
        "backup_every_steps",
        0,
        "Also back up every N steps inside an "
        "epoch (0: at each epoch's end only); a restarted run resumes at the "
        "last backup's step. SIGTERM always backs up before stopping.",
        lower_bound=0,
    )
    d.DEFINE_integer(
        "keep_backups",
        2,
        "Backup versions kept in --model_dir/backup: each backup is written beside "
        "the last, so a write cut short resumes from the one before.",
        lower_bound=1,
    )
    d.DEFINE_boolean(
        "force_unlock",
        False,
        "Take over --model_dir's lock even when its holder may be alive (another "
        "host): only when you know that trainer has ended.",
    )
    d.DEFINE_integer("log_every_steps", 10, "Steps between step-level TensorBoard logs.")
    d.DEFINE_integer(
        "precise_bn_images",
        0,
        "Before each evaluation, recompute "
        "BatchNorm's moving mean and variance from this many training images "
        "with the current weights (PreciseBN; 0: keep the moving averages).",
    )
    d.DEFINE_integer("eval_every_epochs", 1, "Evaluate every N epochs (0: only at the end).")
    d.DEFINE_integer("verbose", 2, "Keras progress: 0 silent, 1 bar, 2 a line an epoch.")
