"""`summary.json`: what a finished run reports, written by one writer.

Both the trainer (`run.TrainingRun`) and the study's in-memory runs write
it through `Summary.write`, so the two carry the same keys.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

SCHEMA_VERSION = 1


@dataclasses.dataclass
class Summary:
    """One run's results (the schema of `summary.json`, version 1).

    Attributes:
        top1, top5, loss: the final model on `eval_split`.
        steps: optimizer steps trained in all.
        eval_split: the split of `top1`.
        wall_seconds: this process's training seconds.
        wall_seconds_in_all: training seconds over every process the run was
            resumed through (None when an older backup does not say).
        images_per_second: images trained per second by this process.
        epochs_run: epochs this process trained (part of one counts).
        resumed_from_epoch: the epoch this process resumed in (None: fresh).
        skipped_records: bad input skipped in all, by kind.
        skipped_by_split: the same per split.
        backend: the Keras backend that trained.
        machine: CPU cores and accelerators (`engines.machine()`).
        test_split, test_top1, test_top5, test_loss: the final model on the
            test split; absent from the file when there is none.
        noise_scale: with `--log_noise_scale`, the last smoothed `b_simple`,
            `gradient_sq`, `trace`, the `measurements` this process made,
            `micro_batches`, `every_steps`, and `curve`: one row
            `[step, b_simple, gradient_sq, trace]` a measurement; absent
            otherwise.
    """

    top1: float
    top5: float
    loss: float
    steps: int
    eval_split: str
    wall_seconds: float
    wall_seconds_in_all: Optional[float]
    images_per_second: float
    epochs_run: int
    backend: str
    machine: dict[str, Any]
    resumed_from_epoch: Optional[int] = None
    skipped_records: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped_by_split: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    test_split: Optional[str] = None
    test_top1: Optional[float] = None
    test_top5: Optional[float] = None
    test_loss: Optional[float] = None
    noise_scale: Optional[dict[str, Any]] = None

    def as_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        if self.test_split is None:
            for key in ("test_split", "test_top1", "test_top5", "test_loss"):
                del values[key]
        if self.noise_scale is None:
            del values["noise_scale"]
        return dict(values, version=SCHEMA_VERSION)

    def write(self, folder: str) -> str:
        """Writes `folder/summary.json` through a rename; its path."""
        from tf_lars.training.checkpoints import write_text_atomically

        path = os.path.join(folder, "summary.json")
        write_text_atomically(path, json.dumps(self.as_dict(), indent=2))
        return path
