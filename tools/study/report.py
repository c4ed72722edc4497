"""The large-batch study's outputs: the CSV of every run, the table and its
verdicts (`plots.py` draws the plots).

`results` maps each run (its `Run`) to the trainer's summary of it (None when
it diverged), `chosen` each (method, batch size) to the trial chosen on the
held-out images.
"""

import collections
import csv
import math
import os
import statistics

from study.spec import COMPARISON_ORDER, METHODS


def _is_float(text):
    try:
        return not math.isnan(float(text))
    except (TypeError, ValueError):
        return False


def history(runs_dir, run):
    """Per-epoch rows of a run's `history.csv` (as floats), one an epoch.

    Records made before the trainer kept one row an epoch hold two for an
    epoch a run was stopped and resumed in: its end is the later one.
    """
    path = os.path.join(runs_dir, run.name, "history.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [
            {k: float(v) for k, v in row.items() if _is_float(v)} for row in csv.DictReader(f)
        ]  # "NA": epochs without evaluation
    return list({row["epoch"]: row for row in rows}.values())


CSV_FIELDS = [
    "method",
    "batch_size",
    "trial",
    "learning_rate",
    "trust_coefficient",
    "seed",
    "chosen",
    "holdout_top1",
    "test_top1",
    "test_loss",
    "steps",
    "wall_seconds",
    "resumed_from_epoch",
    "images_per_second",
    "machine",
    "diverged",
]


def rows(results, chosen):
    picked = {(r.method, r.batch_size, r.trial) for r in chosen.values()}
    out = []
    for run, s in sorted(
        results.items(),
        key=lambda kv: (
            kv[0].batch_size,
            kv[0].method,
            kv[0].learning_rate,
            kv[0].trust_coefficient or 0,
            kv[0].seed,
        ),
    ):
        out.append(
            dict(
                method=run.method,
                batch_size=run.batch_size,
                trial=run.trial,
                learning_rate=run.learning_rate,
                trust_coefficient=run.trust_coefficient or "",
                seed=run.seed,
                chosen=(run.method, run.batch_size, run.trial) in picked,
                holdout_top1=s and round(s["top1"], 4),
                test_top1=s and round(s["test_top1"], 4),
                test_loss=s and round(s["test_loss"], 4),
                steps=s and s["steps"],
                wall_seconds=s and round(wall_seconds(s), 1),
                resumed_from_epoch=s and s.get("resumed_from_epoch"),
                images_per_second=s and round(s["images_per_second"]),
                machine=s and machine_of(s),
                diverged=s is None,
            )
        )
    return out


def wall_seconds(summary):
    """A run's training seconds, over every process it was resumed through
    where its summary says (`wall_seconds_in_all`), else its last process's."""
    in_all = summary.get("wall_seconds_in_all")
    return summary["wall_seconds"] if in_all is None else in_all


def machine_of(summary):
    """The machine a run's summary names ('not recorded' before summaries did)."""
    from tf_lars.training import engines

    return engines.describe_machine(summary["machine"]) if "machine" in summary else "not recorded"


def machines(results):
    """'Made on 2 CPU cores (12 runs)', over the runs that did not diverge."""
    counts = collections.Counter(machine_of(s) for s in results.values() if s is not None)
    return "Machines: " + "; ".join(f"{m} ({n} runs)" for m, n in sorted(counts.items())) + "."


def chosen_scores(results, chosen):
    """`{(method, batch): [test top-1 of each seed of the chosen trial]}`."""
    scores = {}
    for key, pick in chosen.items():
        scores[key] = [
            s["test_top1"]
            for r, s in results.items()
            if s is not None
            and (r.method, r.batch_size, r.trial) == (pick.method, pick.batch_size, pick.trial)
        ]
    return scores


def _mean(values):
    text = f"{100 * statistics.mean(values):.2f}"
    if len(values) > 1:
        text += f" ± {100 * statistics.stdev(values):.2f} ({len(values)} seeds)"
    return text


LABELS = {name: method.label for name, method in METHODS.items()}
# ImageNet's 1,281,167 training images over the 50,000 the study trains on:
# at batch B an epoch takes as many steps as ImageNet's at about 25.6 B.
IMAGENET_RATIO = 1_281_167 / 50_000


def imagenet_batch(batch):
    """The ImageNet batch size with as many steps an epoch, e.g. '26K'."""
    return f"{IMAGENET_RATIO * batch / 1024:.0f}K"


def largest_within(scores, method, baseline_batch, batch_sizes, points=1.0):
    """The largest batch size at which `method`'s mean test top-1 is within
    `points` of the baseline's mean (None if at none)."""
    base = scores.get(("baseline", baseline_batch))
    if not base:
        return None
    within = [
        b
        for b in batch_sizes
        if (method, b) in scores
        and
        # (rounded: 90.0 - 89.0 is 1.0000000000000009 in floating point)
        round(100 * (statistics.mean(base) - statistics.mean(scores[(method, b)])), 9) <= points
    ]
    return max(within, default=None)


def table(results, chosen, baseline_batch, batch_sizes, methods=("sgd", "lars"), planned=None):
    """The markdown table: the chosen trial of each method at each size.

    `planned` maps (method, batch) to the number of trials the study plans
    there; given, a point with fewer trials recorded says how many (a study
    still under way), and one with none says it has not run yet.
    """
    scores = chosen_scores(results, chosen)
    tried = {}
    for run in results:
        if run.seed == 1:
            tried[(run.method, run.batch_size)] = tried.get((run.method, run.batch_size), 0) + 1
    lines = [
        "| batch | ImageNet steps/epoch as at | method | chosen trial | peak rate "
        "| held-out top-1 % | test top-1 % | steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for batch, group in [(baseline_batch, ["baseline"])] + [
        (b, list(methods)) for b in batch_sizes
    ]:
        for method in group:
            key = (method, batch)
            pick = chosen.get(key)
            first = f"| {batch} | {imagenet_batch(batch)} | {LABELS[method]} |"
            done, total = tried.get(key, 0), (planned or {}).get(key)
            if not done:
                lines.append(f"{first} not run yet | | | | |")
                continue
            so_far = (
                f" (best of {done} of {total} trials so far)" if total and done < total else ""
            )
            if pick is None:
                lines.append(f"{first} every trial diverged{so_far} | | | | |")
                continue
            s = results[pick]
            lines.append(
                f"{first} {pick.describe()}{so_far} | {pick.learning_rate:.4g} "
                f"| {100 * s['top1']:.2f} | {_mean(scores[key])} "
                f"| {s['steps']} |"
            )
    lines += [
        "",
        "| method | largest batch within 1 point of the baseline (mean test top-1) |",
        "|---|---|",
    ]
    for method in methods:
        b = largest_within(scores, method, baseline_batch, batch_sizes)
        missing = [str(n) for n in batch_sizes if (method, n) not in scores]
        text = str(b or "none")
        if len(missing) == len(batch_sizes):
            text = "not run yet"
        elif missing and planned:
            text += f" (not yet run at {', '.join(missing)})"
        lines.append(f"| {LABELS[method]} | {text} |")
    compared = differences(scores, batch_sizes, methods)
    if compared:
        lines += [
            "",
            "| batch | difference in mean test top-1 (points) | against the seeds' spread |",
            "|---|---|---|",
            *compared,
        ]
    return "\n".join(lines)


def verdict(a, b):
    """Whether two sets of seeds' test top-1 differ beyond their spread: the
    seeds' ranges must not overlap, and each side needs two seeds at least."""
    if len(a) < 2 or len(b) < 2:
        return "one seed on a side: not judged"
    if min(a) > max(b) or min(b) > max(a):
        return "exceeds the spread (the seeds' ranges do not overlap)"
    return "within the spread (the seeds' ranges overlap)"


def differences(scores, batch_sizes, methods):
    """Table rows comparing each pair of methods at each batch size where both
    have results: LARS first, then Nesterov, against the others."""
    order = [m for m in COMPARISON_ORDER if m in methods]
    out = []
    for batch in batch_sizes:
        for i, a in enumerate(order):
            for b in order[i + 1 :]:
                if (a, batch) not in scores or (b, batch) not in scores:
                    continue
                sa, sb = scores[(a, batch)], scores[(b, batch)]
                diff = 100 * (statistics.mean(sa) - statistics.mean(sb))
                out.append(f"| {batch} | {a} - {b}: {diff:+.2f} | {verdict(sa, sb)} |")
    return out


def edge_table(results, chosen, edges):
    """The markdown table of the runs past the grid's edges (`edges` maps each
    to its summary, None when it diverged): did the edge hold?"""
    lines = [
        "| batch | method | chosen trial: held-out top-1 % | a step past the edge "
        "| held-out top-1 % | test top-1 % | the grid |",
        "|---|---|---|---|---|---|---|",
    ]
    for run, s in sorted(edges.items(), key=lambda kv: (kv[0].batch_size, kv[0].method)):
        pick = chosen[(run.method, run.batch_size)]
        held = results[pick]["top1"]
        first = (
            f"| {run.batch_size} | {LABELS[run.method]} | {pick.describe()}: "
            f"{100 * held:.2f} | {run.describe()} (peak {run.learning_rate:.4g}) |"
        )
        if s is None:
            lines.append(f"{first} diverged | | wide enough |")
            continue
        verdict = "too narrow: better past its edge" if s["top1"] > held else "wide enough"
        lines.append(f"{first} {100 * s['top1']:.2f} | {100 * s['test_top1']:.2f} | {verdict} |")
    return "\n".join(lines)


EDGES_NOTE = (
    "Past the grid's edges: where a chosen trial is its grid's smallest or "
    "largest rate, one run (seed 1) a grid step further. These runs take no part "
    "in the choice above; a better held-out accuracy past the edge means that "
    "method was tuned too narrowly there."
)


def report(
    results,
    chosen,
    runs_dir,
    output_dir,
    baseline_batch,
    batch_sizes,
    header,
    methods=("sgd", "lars"),
    planned=None,
    epochs=None,
    edges=None,
    noise=None,
):
    """Writes runs.csv, results.md and the plots; `edges` and `noise` are
    `{run: summary}` of the runs past the edges and of the noise-scale runs."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "runs.csv"), "w", newline="") as f:
        out = csv.DictWriter(f, CSV_FIELDS)
        out.writeheader()
        out.writerows(rows(results, chosen))
    text = table(results, chosen, baseline_batch, batch_sizes, methods, planned)
    if edges:
        text += "\n\n" + EDGES_NOTE + "\n\n" + edge_table(results, chosen, edges)
    if noise:
        from study.noise import section

        text += "\n\n" + section(
            noise, results, chosen, baseline_batch, batch_sizes, methods, output_dir
        )
    from study.plots import plots

    names = plots(
        results, chosen, runs_dir, baseline_batch, batch_sizes, output_dir, methods, epochs
    )
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(
            "# The large-batch study: results"
            + (f", {epochs:g} epochs" if epochs else "")
            + "\n\n"
            + header
            + " "
            + machines(results)
            + "\n\n"
            + text
            + "\n\n"
            + "\n".join(f"![{n}]({n})" for n in names)
            + "\n"
        )
    return text
