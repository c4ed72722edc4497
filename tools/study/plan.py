"""The study's plan: its trials, the choice among them, the extra seeds and
the runs past the grids' edges; `sweep` runs it one batch size at a time."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, Callable, Optional

from study.spec import METHODS, NOISE_SCALE_MEASUREMENTS, Run

Results = dict[Run, Optional[dict[str, Any]]]  # run -> its summary (None: diverged)


def trials(method: str, batch_size: int, given: dict[str, list[str]], seed: int = 1) -> list[Run]:
    """The runs of one (method, batch size) point: one per trial.

    `given` maps each method's trials flag (`Method.trials_flag`) to its trials.
    """
    spec = METHODS[method]
    return [
        Run(method, batch_size, spec.rate(t, batch_size), spec.eta(t), seed, t)
        for t in given[spec.trials_flag]
    ]


Wider = dict[str, dict[int, list[str]]]  # method -> batch size -> more trials


def first_plan(
    baseline_batch: int,
    batch_sizes: Iterable[int],
    given: dict[str, list[str]],
    methods: Iterable[str] = ("sgd", "lars"),
    wider: Optional[Wider] = None,
) -> list[Run]:
    """Every trial at seed 1: the baseline, then each method at each size,
    its grid widened there by `wider`'s trials (given as `given`'s are)."""
    plan = trials("baseline", baseline_batch, given)
    for b in batch_sizes:
        for method in methods:
            more = (wider or {}).get(method, {}).get(b, [])
            plan += trials(method, b, given)
            plan += trials(method, b, {METHODS[method].trials_flag: more})
    return plan


def choose(results: Results) -> dict[tuple[str, int], Run]:
    """`{(method, batch): Run}`: the trial with the best held-out accuracy.

    Only the first seed's runs take part, so extra seeds cannot sway the choice.
    """
    best: dict[tuple[str, int], Run] = {}
    for run, summary in results.items():
        if run.seed != 1 or summary is None:
            continue
        key = (run.method, run.batch_size)
        if key not in best or summary["top1"] > results[best[key]]["top1"]:  # type: ignore
            best[key] = run
    return best


def base_rate(trial: str) -> float:
    """A trial's rate as given ("0.1" or LARS's "2:0.02" -> 2.0)."""
    return float(trial.split(":")[0])


def beyond_edges(chosen: dict[tuple[str, int], Run], plan: list[Run]) -> list[Run]:
    """Runs one grid step past the edge, one for each chosen trial that sits
    on its grid's edge: seed 1, at the rate a step below the lowest trial (or
    above the highest) of its point, the step being the ratio of that trial to
    its neighbour (LARS: among the trials with the chosen eta). They do not
    take part in the choice; they say whether the grid was wide enough.
    """
    out = []
    for (method, batch), pick in sorted(chosen.items()):
        if method == "baseline":
            continue
        grid = sorted(
            {
                base_rate(r.trial)
                for r in plan
                if r.seed == 1
                and (r.method, r.batch_size, r.trust_coefficient)
                == (method, batch, pick.trust_coefficient)
            }
        )
        rate = base_rate(pick.trial)
        if len(grid) < 2 or rate not in (grid[0], grid[-1]):
            continue
        step = rate / (grid[1] if rate == grid[0] else grid[-2])
        trial = f"{rate * step:.6g}"
        if pick.trust_coefficient is not None:
            trial += ":" + pick.trial.split(":")[1]
        out += trials(method, batch, {METHODS[method].trials_flag: [trial]})
    return out


def more_seeds(
    chosen: dict[tuple[str, int], Run],
    batch_sizes: Iterable[int],
    seeds: int,
    baseline: bool = False,
) -> list[Run]:
    """Runs of the chosen trials at `batch_sizes` with seeds 2..seeds (the
    baseline's too when `baseline`)."""
    sizes = set(batch_sizes)
    return [
        dataclasses.replace(run, seed=s)
        for (method, batch), run in sorted(chosen.items())
        if (batch in sizes and method != "baseline") or (method == "baseline" and baseline)
        for s in range(2, seeds + 1)
    ]


def planned_total(plan: list[Run], batch_sizes: list[int], every: bool, seeds: int) -> int:
    """How many runs the study makes: `plan`'s trials and the extra seeds."""
    points = {(run.method, run.batch_size) for run in plan}
    seeded = (
        len(points) if every else sum(m != "baseline" for m, b in points if b == max(batch_sizes))
    )
    return len(plan) + seeded * (seeds - 1)


def by_batch_size(plan: list[Run]) -> list[list[Run]]:
    """`plan`'s runs in groups: the baseline's, then one per large batch size."""
    groups: dict[Any, list[Run]] = {}
    for run in plan:
        key = "baseline" if run.method == "baseline" else run.batch_size
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def sweep(
    plan: list[Run],
    batch_sizes: list[int],
    every: bool,
    seeds: int,
    run_all: Callable[[list[Run]], Results],
) -> Results:
    """`{run: summary}` of the whole study, one batch size at a time.

    The baseline first, then each large batch size in `plan`'s order: its
    trials, then seeds 2..`seeds` of the trials chosen there, so that each
    batch size's comparison is whole, seeds and all, before the next one
    starts (a sweep stopped part-way leaves complete rows, not a grid of
    single seeds). `run_all(runs)` runs them and returns `{run: summary}`.
    """
    seeded_batches = batch_sizes if every else [max(batch_sizes)]
    results: Results = {}
    for group in by_batch_size(plan):
        results.update(run_all(group))
        here = {key: run for key, run in choose(results).items() if run in group}
        results.update(run_all(more_seeds(here, seeded_batches, seeds, baseline=every)))
    return results


def check_args(
    given: dict[str, list[str]], methods: Iterable[str], batch_sizes: Iterable[Any]
) -> None:
    """Every method's trials well formed and as many as the others'."""
    flags = ["sgd_rates"] + [METHODS[m].trials_flag for m in methods if m != "sgd"]
    counts = {flag: len(given[flag]) for flag in dict.fromkeys(flags)}
    for flag, count in counts.items():
        if count != counts["sgd_rates"]:
            raise ValueError(
                f"--{flag} has {count} trials and --sgd_rates "
                f"{counts['sgd_rates']}: give every method the same number"
            )
    for flag in counts:
        for t in given[flag]:
            parts = t.split(":")
            if flag == "lars_trials" and (len(parts) != 2 or not all(map(_is_number, parts))):
                raise ValueError(f"--lars_trials: {t!r} is not LR:ETA (e.g. 3:0.01)")
            if flag != "lars_trials" and not _is_number(t):
                raise ValueError(f"--{flag}: {t!r} is not a number")
    for b in batch_sizes:
        if not str(b).isdigit() or int(b) < 1:
            raise ValueError(f"--batch_sizes: {b!r} is not a positive integer")


def _is_number(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def noise_scale_runs(
    chosen: dict[tuple[str, int], Run], points: Iterable[tuple[str, int]]
) -> list[Run]:
    """The chosen trial (seed 1) at each (method, batch) of `points` that has one."""
    return [chosen[(m, b)] for m, b in points if (m, b) in chosen]


def noise_scale_every(run: Run, epochs: float, train_examples: int) -> int:
    """Steps between measurements: about NOISE_SCALE_MEASUREMENTS in the run."""
    steps = int(epochs * (train_examples // run.batch_size))
    return max(1, steps // NOISE_SCALE_MEASUREMENTS)


def share(runs: list[Run], shard: tuple[int, int]) -> list[Run]:
    """Shard `I/N`'s part of `runs`: every N-th, from the I-th."""
    index, count = shard
    return runs[index::count]
