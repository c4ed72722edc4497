"""What the study compares, declared once: the methods (a table), the forms
(batch sizes, length, grids) and one run of the plan (`Run`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

LINEAR_SCALING_BATCH = 256  # the batch size linear-rule trials are given at
LARS_REFERENCE_BATCH = 1024  # the batch size square-root-rule trials are given at
NOISE_SCALE_MEASUREMENTS = 100  # about this many a noise-scale run


@dataclasses.dataclass(frozen=True)
class Method:
    """One method of the study.

    Attributes:
        name: as in run names, the CSV and `--methods`-like lists.
        label: as in the table and the plots.
        optimizer: the trainer's `--optimizer`.
        schedule: "step" (Goyal et al.'s decays at 30, 60, 80 of 90 epochs, the
            same fractions of the part after warmup) or "poly" (power 2).
        rate_rule: "linear" (trial r at batch 256: r * B / 256) or "sqrt"
            (trial LR:ETA at batch 1024: LR * sqrt(B / 1024), with LARS's eta).
        trials_flag: the study's flag that lists its trials.
        warmup: whether it warms up (the small-batch baseline does not).
        style, color: its line in the plots.
    """

    name: str
    label: str
    optimizer: str
    schedule: str
    rate_rule: str
    trials_flag: str
    warmup: bool = True
    style: str = "o-"
    color: str = "C0"

    def rate(self, trial: str, batch_size: int) -> float:
        """The peak rate of `trial` at `batch_size`, by this method's rule."""
        base = float(trial.split(":")[0])
        if self.rate_rule == "sqrt":
            return round(base * math.sqrt(batch_size / LARS_REFERENCE_BATCH), 6)
        return round(base * batch_size / LINEAR_SCALING_BATCH, 6)

    def eta(self, trial: str) -> Optional[float]:
        """LARS's trust coefficient of `trial` (None for the others)."""
        return float(trial.split(":")[1]) if self.rate_rule == "sqrt" else None

    def describe(self, trial: str, eta: Optional[float]) -> str:
        """The trial as the table says it ('lr 0.1 @256', 'lr 2 @1K, eta 0.02')."""
        if self.rate_rule == "sqrt":
            return f"lr {trial.split(':')[0]} @1K, eta {eta:g}"
        return f"lr {trial} @{LINEAR_SCALING_BATCH}"


METHODS = {
    m.name: m
    for m in (
        Method(
            "baseline",
            "momentum SGD (baseline)",
            "sgd",
            "step",
            "linear",
            "sgd_rates",
            warmup=False,
            color="gray",
        ),
        Method(
            "sgd",
            "momentum SGD + linear scaling + warmup",
            "sgd",
            "step",
            "linear",
            "sgd_rates",
            style="o-",
            color="C0",
        ),
        # Nado et al. 2021 (arXiv:2102.06356) matched LARS on ResNet-50 at batch
        # 32K with this recipe: Nesterov, LARS's warmup and polynomial decay.
        Method(
            "nesterov",
            "Nesterov + linear scaling + warmup + poly(2)",
            "nesterov",
            "poly",
            "linear",
            "nesterov_rates",
            style="^-",
            color="C2",
        ),
        Method(
            "lars",
            "LARS + warmup + poly(2)",
            "lars",
            "poly",
            "sqrt",
            "lars_trials",
            style="s-",
            color="C1",
        ),
    )
}
# The order of the table's comparisons: each against those after it.
COMPARISON_ORDER = ("lars", "nesterov", "sgd")

# At batch B, Fashion-MNIST's 50,000 training images take as many steps an
# epoch as ImageNet's 1,281,167 at about 25.6 B: 1024 is the paper's 32K.
_FULL = dict(
    batch_sizes=[1024, 2048, 4096, 8192],
    methods=["sgd", "nesterov", "lars"],
    sgd_rates=["0.05", "0.1", "0.2"],
    nesterov_rates=["0.05", "0.1", "0.2"],
    lars_trials=["1:0.02", "2:0.02", "4:0.02"],
    # More trials where a chosen trial sat on its grid's edge and a run a step
    # past it did better (15 epochs): {method: {batch size: trials}}.
    wider_trials={"nesterov": {1024: ["0.4", "0.8"], 8192: ["0.025", "0.0125"]}},
    seeds_at_every_batch=True,
)
FORMS = {
    # Two large batches, 3 epochs, 3 trials per point: 17 runs.
    "reduced": dict(
        batch_sizes=[1024, 4096],
        epochs=3,
        warmup_epochs=0.75,
        methods=["sgd", "lars"],
        seeds_at_every_batch=False,
    ),
    # Four sizes (ImageNet's 26K to 210K in steps an epoch), three methods,
    # 3 trials each, 2 seeds of every chosen trial: 52 runs.
    "full": dict(
        _FULL,
        epochs=30,
        warmup_epochs=5.0,
        runs_dir="docs/study-full/runs",
        output_dir="docs/study-full",
    ),
    # The same grid at half the length, for machines without a GPU.
    "full15": dict(
        _FULL,
        epochs=15,
        warmup_epochs=2.5,
        runs_dir="docs/study-full15/runs",
        output_dir="docs/study-full15",
    ),
}


@dataclasses.dataclass(frozen=True)
class Run:
    method: str  # a key of METHODS
    batch_size: int
    learning_rate: float  # peak rate of this run
    trust_coefficient: Optional[float]  # LARS's eta (None for the others)
    seed: int
    trial: str  # the trial's value as given (e.g. "0.1", "3:0.01")

    @property
    def name(self) -> str:
        eta = f"_eta{self.trust_coefficient:g}" if self.trust_coefficient else ""
        return f"{self.method}_b{self.batch_size}_lr{self.learning_rate:.4g}{eta}_s{self.seed}"

    @property
    def spec(self) -> Method:
        return METHODS[self.method]

    def flags(self, epochs: float, warmup_epochs: float) -> list[str]:
        """The trainer flags that make this run what it is."""
        method = self.spec
        warmup = warmup_epochs if method.warmup else 0.0
        out = [
            f"--batch_size={self.batch_size}",
            f"--learning_rate={self.learning_rate!r}",
            f"--epochs={epochs!r}",
            f"--seed={self.seed}",
            f"--optimizer={method.optimizer}",
        ]
        if self.trust_coefficient is not None:
            out.append(f"--trust_coefficient={self.trust_coefficient!r}")
        if method.schedule == "poly":
            return out + [f"--warmup_epochs={warmup!r}", "--schedule=poly", "--poly_power=2"]
        # Goyal et al.: warmup 5, decays at 30, 60 and 80 of 90 epochs; the
        # same fractions of the part after warmup, for any budget.
        steps = ",".join(
            f"{warmup + (epochs - warmup) * f:.4g}" for f in (25 / 85, 55 / 85, 75 / 85)
        )
        return out + [f"--warmup_epochs={warmup!r}", "--schedule=step", f"--step_epochs={steps}"]

    def describe(self) -> str:
        return self.spec.describe(self.trial, self.trust_coefficient)
