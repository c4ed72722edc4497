"""The training recipe: plan, schedule, optimizer and model from a `TrainConfig`.

The trainer and the study's in-memory runner both build their run from
these functions, so both train exactly the same model with the same
optimizer. `data` is anything with the data's sizes as attributes (a
`DataSpec`).
"""

from __future__ import annotations

from typing import Any

from tf_lars.training.config import Plan, TrainConfig


def derive(cfg: TrainConfig, data: Any, num_replicas: int) -> Plan:
    """Steps and rates that follow from `cfg` and the data, each with its reason."""
    batch = cfg.batch_size
    if batch % num_replicas:
        raise ValueError(
            f"--batch_size={batch} does not divide among the "
            f"{num_replicas} replicas: use a multiple of {num_replicas}"
        )
    # Whole batches only: an epoch is the number of full global batches.
    steps_per_epoch = data.train_examples // batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"--batch_size={batch} is larger than the training set "
            f"({data.train_examples} examples)"
        )
    if cfg.train_steps is None and cfg.epochs is None:
        raise ValueError("give the run's length: --epochs or --train_steps")
    total_steps = cfg.train_steps or max(1, round(cfg.epochs * steps_per_epoch))
    # Linear scaling rule (Goyal et al.): the peak rate grows with the batch,
    # unless an absolute --learning_rate is given.
    peak = cfg.learning_rate or (cfg.base_learning_rate * batch / cfg.base_batch_size)
    # Warmup is given in epochs so that it means the same at every batch size.
    warmup_steps = min(round(cfg.warmup_epochs * steps_per_epoch), total_steps - 1)
    eval_batch = cfg.eval_batch_size or batch
    if eval_batch % num_replicas:
        raise ValueError(
            f"--eval_batch_size={eval_batch} does not divide among the "
            f"{num_replicas} replicas: use a multiple of {num_replicas}"
        )
    # Evaluation repeats its data and runs a fixed number of steps, the same
    # on every worker; a batch that divides the set sees each image once.
    eval_steps = -(-data.eval_examples // eval_batch)
    test_steps = 0
    if cfg.test_split:
        test_examples = cfg.test_examples
        if not test_examples:  # The format's evaluation set size.
            from tf_lars.training import inputs

            test_examples = int(inputs.FORMAT_DEFAULTS[data.data_format]["eval_examples"])
        test_steps = -(-test_examples // eval_batch)
    if cfg.precise_bn_images < 0:
        raise ValueError(
            f"--precise_bn_images={cfg.precise_bn_images} is negative: "
            "give a number of training images, or 0 to keep the moving averages"
        )
    # Whole training batches that cover --precise_bn_images.
    precise_bn_steps = -(-cfg.precise_bn_images // batch)
    return Plan(
        test_steps=test_steps,
        precise_bn_steps=precise_bn_steps,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        epochs=-(-total_steps // steps_per_epoch),
        peak_learning_rate=peak,
        warmup_steps=warmup_steps,
        eval_steps=eval_steps,
        eval_batch=eval_batch,
        replicas=num_replicas,
        per_replica_batch=batch // num_replicas,
    )


def schedule(plan: Plan, cfg: TrainConfig) -> Any:
    """The learning-rate schedule: warmup, then `cfg.schedule`'s decay."""
    from tf_lars import schedules

    if cfg.schedule == "poly":
        return schedules.WarmupPolynomialDecay(
            plan.peak_learning_rate,
            plan.total_steps,
            plan.warmup_steps,
            power=cfg.poly_power,
            end_learning_rate=cfg.end_learning_rate,
        )
    if cfg.schedule == "cosine":
        return schedules.warmup_cosine_decay(
            plan.peak_learning_rate,
            plan.total_steps,
            plan.warmup_steps,
            end_learning_rate=cfg.end_learning_rate,
        )
    boundaries = [round(float(e) * plan.steps_per_epoch) for e in cfg.step_epochs]
    values = [plan.peak_learning_rate * 0.1**i for i in range(len(boundaries) + 1)]
    return schedules.WarmupPiecewiseConstant(boundaries, values, plan.warmup_steps)


def optimizer(plan: Plan, cfg: TrainConfig) -> Any:
    """`tf_lars.LARS`, or momentum SGD (`cfg.optimizer`: "sgd", "nesterov")."""
    from tf_lars import LARS

    kwargs = dict(
        learning_rate=schedule(plan, cfg),
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        exclude_from_weight_decay=_listed(cfg.exclude_from_weight_decay),
    )
    if cfg.optimizer in ("sgd", "nesterov"):
        # Momentum SGD with the same coupled weight decay and masks: LARS
        # with layer adaptation switched off for every variable. Nesterov
        # with warmup and polynomial decay is Nado et al.'s (arXiv:2102.06356)
        # match for LARS at large batch.
        return LARS(
            exclude_from_layer_adaptation=[""],
            name=cfg.optimizer,
            nesterov=cfg.optimizer == "nesterov",
            **kwargs,
        )
    return LARS(
        trust_coefficient=cfg.trust_coefficient,
        trust_ratio=cfg.trust_ratio,
        clip_trust_ratio=cfg.clip_trust_ratio,
        exclude_from_layer_adaptation=_listed(cfg.exclude_from_layer_adaptation),
        track_trust_ratios=cfg.log_trust_ratios,
        **kwargs,
    )


def _listed(patterns: Any) -> Any:
    return None if patterns is None else list(patterns)


def compile_args(plan: Plan, cfg: TrainConfig) -> dict[str, Any]:
    """`model.compile`'s optimizer, loss (on logits) and metrics (top-1, top-5)."""
    import keras

    return dict(
        optimizer=optimizer(plan, cfg),
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=cfg.label_smoothing
        ),
        metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.TopKCategoricalAccuracy(5, name="top5"),
        ],
    )


def model(cfg: TrainConfig, data: Any) -> Any:
    """`cfg.model` for `data`'s images, taking uint8 pixels it normalizes itself."""
    from tf_lars import models

    kwargs = dict(
        num_classes=data.num_classes,
        image_size=data.image_size,
        channels=data.channels,
        input_dtype="uint8",
        mean=data.norm[0],
        std=data.norm[1],
    )
    if cfg.model != "alexnet_bn":
        kwargs["zero_init_residual"] = cfg.zero_init_residual
    return models.build(cfg.model, **kwargs)


def load_initial_weights(model: Any, path: str, model_name: str) -> None:
    """Starts `model` from the weights in `path` (`--init_weights`: a
    `.weights.h5` or `.keras` file of the same model)."""
    import os

    import keras

    if not os.path.exists(path):
        raise FileNotFoundError(f"--init_weights={path}: no such file")
    try:
        if path.endswith(".keras"):
            model.set_weights(keras.models.load_model(path, compile=False).get_weights())
        else:
            model.load_weights(path)
    except ValueError as e:
        raise ValueError(
            f"--init_weights={path} does not fit --model={model_name} "
            f"with these flags: {str(e).splitlines()[0]}"
        ) from None
