"""The run's settings as typed values: `TrainConfig` (what the user asked for)
and `Plan` (what follows from it for the data and the replicas).

`tf-lars-train` turns its flags into a `TrainConfig` once, at the entry point
(`from_flags`); every other part of the trainer takes the config or the plan,
never absl's FLAGS. Each field of `TrainConfig` is the flag of the same name
(`flags.py` holds their help texts); a test holds the two in step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Optional

from tf_lars.training import flags as train_flags

ModelName = Literal["resnet50", "alexnet_bn", "resnet8", "resnet20", "resnet32", "resnet56"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run, with the trainer's defaults.

    None means "the data format's default" for the data's sizes and preset,
    and "not given" elsewhere (see `flags.py` for each field's meaning).
    """

    # Model and data.
    model: ModelName = "resnet50"
    zero_init_residual: bool = True
    data_dir: Optional[str] = None
    data_service: Optional[str] = None
    data_format: Literal["imagenet", "tfds", "fashion_mnist", "synthetic"] = "imagenet"
    image_size: Optional[int] = None
    num_classes: Optional[int] = None
    channels: Optional[int] = None
    preset: Optional[str] = None
    label_offset: Optional[int] = None
    train_examples: Optional[int] = None
    eval_examples: Optional[int] = None
    eval_split: str = "validation"
    test_split: Optional[str] = None
    test_examples: Optional[int] = None
    strict_data: bool = False
    cache_eval: bool = False
    shuffle_buffer: int = 10_000
    # Batch, length, schedule, optimizer.
    batch_size: int = 256
    eval_batch_size: Optional[int] = None
    epochs: Optional[float] = None
    train_steps: Optional[int] = None
    optimizer: Literal["lars", "sgd", "nesterov"] = "lars"
    learning_rate: Optional[float] = None
    base_learning_rate: float = 0.1
    base_batch_size: int = 256
    warmup_epochs: float = 5.0
    schedule: Literal["poly", "cosine", "step"] = "poly"
    poly_power: float = 2.0
    end_learning_rate: float = 0.0
    step_epochs: tuple[str, ...] = ("30", "60", "80")
    momentum: float = 0.9
    weight_decay: float = 1e-4
    trust_coefficient: float = 0.001
    trust_ratio: Literal["paper", "decayed_gradient"] = "paper"
    clip_trust_ratio: bool = False
    exclude_from_weight_decay: Optional[tuple[str, ...]] = None
    exclude_from_layer_adaptation: Optional[tuple[str, ...]] = None
    label_smoothing: float = 0.0
    init_weights: Optional[str] = None
    seed: Optional[int] = None
    deterministic: bool = False
    # Distribution and speed.
    strategy: str = "auto"
    tpu: Optional[str] = None
    collective_communication: str = "auto"
    cpu_devices: int = 1
    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    mixed_precision: Literal["none", "mixed_float16", "mixed_bfloat16"] = "none"
    jit_compile: bool = False
    gradient_accumulation_steps: Optional[int] = None
    steps_per_execution: int = 1
    # Output and monitoring.
    model_dir: Optional[str] = None
    scratch_dir: Optional[str] = None
    log_trust_ratios: bool = False
    log_noise_scale: bool = False
    noise_scale_every_steps: int = 100
    noise_scale_micro_batches: int = 0
    backup_every_steps: int = 0
    keep_backups: int = 2
    force_unlock: bool = False
    log_every_steps: int = 10
    precise_bn_images: int = 0
    eval_every_epochs: int = 1
    verbose: int = 2

    def as_flags(self) -> dict[str, Any]:
        """`{flag name: value}`, as `flags.json` records them."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def from_flags(flag_values: Any) -> TrainConfig:
    """The config of the trainer's flags as parsed in `flag_values` (absl's
    `FlagValues`, holding `flags.define`'s flags)."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(TrainConfig):
        value = flag_values[field.name].value
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return TrainConfig(**values)


def from_args(args: list[str]) -> TrainConfig:
    """The config that the command-line `args` give (flagfiles expanded),
    parsed by the trainer's own flag parser, apart from absl's FLAGS."""
    from absl import flags

    from tf_lars.training import flagfiles

    parsed = flags.FlagValues()
    train_flags.define(parsed)
    parsed(flagfiles.expand(["tf-lars-train", *args]))
    return from_flags(parsed)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What follows from a `TrainConfig`, the data's sizes and the replicas
    (`recipe.derive` computes it, giving each value's reason)."""

    steps_per_epoch: int  # whole global batches in the training set
    total_steps: int  # optimizer steps of the run
    epochs: int  # epochs `fit` runs (the last may be cut short)
    peak_learning_rate: float  # after the linear scaling rule
    warmup_steps: int
    eval_batch: int  # global evaluation batch
    eval_steps: int  # evaluation batches (the split, rounded up)
    test_steps: int  # batches of --test_split (0: none)
    precise_bn_steps: int  # training batches PreciseBN pools (0: off)
    replicas: int
    per_replica_batch: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


__all__ = ["TrainConfig", "Plan", "from_args", "from_flags"]
