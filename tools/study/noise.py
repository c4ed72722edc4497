"""The study's noise-scale section: B_simple measured through training
(`--noise_scale` runs) beside the batch sizes the study found safe."""

import math
import os

from study.report import LABELS, chosen_scores, largest_within
from study.spec import METHODS

FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)  # of training, where the table reads B_simple

NOTE = (
    "Gradient noise scale: B_simple = tr(Σ)/|G|² (McCandlish et al. 2018), measured "
    "through training by `--log_noise_scale` in a second run of a chosen trial "
    "(seed 1): each measurement cuts a training batch into 4 parts; the value is "
    "the moving average (decay 0.9) at that point; undefined where the smoothed "
    "|G|² is not positive (late in training the true gradient is smaller than "
    "the noise in its estimate). Beside it, the largest batch each method "
    "trained within 1 point of the baseline in the table above."
)


def at_fraction(noise, steps, fraction):
    """The smoothed B_simple of the measurement nearest `fraction` of `steps`;
    None where it is undefined there (the smoothed |G|^2 not positive: near
    the end of training the true gradient is smaller than the noise in its
    estimate), or when nothing was measured."""
    rows = noise["curve"]
    if not rows:
        return None
    return min(rows, key=lambda row: abs(row[0] - fraction * steps))[1]


def limits(results, chosen, baseline_batch, batch_sizes, methods):
    """`{method: the largest batch within 1 point of the baseline}`."""
    scores = chosen_scores(results, chosen)
    return {m: largest_within(scores, m, baseline_batch, batch_sizes) for m in methods}


def section(noise, results, chosen, baseline_batch, batch_sizes, methods, output_dir):
    """The section's markdown (a table and its plot); `noise`: {run: summary}."""
    found = limits(results, chosen, baseline_batch, batch_sizes, methods)
    head = " | ".join(f"{int(100 * f)}%" for f in FRACTIONS)
    lines = [
        NOTE,
        "",
        f"| run | B_simple after {head} of training | test top-1 % (the study's run) |",
        "|---|" + "---|" * len(FRACTIONS) + "---|",
    ]
    for run, summary in sorted(noise.items(), key=lambda item: item[0].batch_size):
        if summary is None or "noise_scale" not in summary:
            continue
        values = [at_fraction(summary["noise_scale"], summary["steps"], f) for f in FRACTIONS]
        study = results.get(run)
        theirs = f" ({100 * study['test_top1']:.2f})" if study else ""
        lines.append(
            f"| {LABELS[run.method]}, batch {run.batch_size}, {run.describe()} | "
            + " | ".join("undefined" if v is None else f"{v:.0f}" for v in values)
            + f" | {100 * summary['test_top1']:.2f}{theirs} |"
        )
    name = plot(noise, found, output_dir)
    return "\n".join(lines) + f"\n\n![{name}]({name})"


def plot(noise, found, output_dir):
    """noise_scale.png: B_simple against epochs (gaps where it is undefined;
    the axis ends at 16 times the largest limit), the study's limits as
    lines; its name."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run, summary in sorted(noise.items(), key=lambda item: item[0].batch_size):
        if summary is None or "noise_scale" not in summary:
            continue
        per_epoch = summary["steps"] / summary["epochs_run"]
        rows = summary["noise_scale"]["curve"]
        spec = METHODS[run.method]
        ax.plot(  # (None, undefined, as a gap in the line)
            [row[0] / per_epoch for row in rows],
            [math.nan if row[1] is None else row[1] for row in rows],
            spec.style[0] + "-",
            color=spec.color,
            markersize=3,
            label=f"B_simple: {spec.label}, batch {run.batch_size}",
        )
    by_batch = {}
    for method, batch in found.items():
        if batch:
            by_batch.setdefault(batch, []).append(METHODS[method].label.split(" +")[0])
    for batch, names in sorted(by_batch.items()):
        ax.axhline(batch, color="black", ls=":", lw=1)
        ax.annotate(
            f"{', '.join(names)}: batch {batch} within 1 point",
            (0.02, batch),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            va="bottom",
        )
    ax.set_yscale("log", base=2)
    top = 16 * max(by_batch, default=1024)
    ax.set_ylim(top=top)
    ax.set_xlabel(f"epoch (gaps: B_simple undefined; values above {top} off the chart)")
    ax.set_ylabel("B_simple (images)")
    ax.set_title("Gradient noise scale through training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    name = "noise_scale.png"
    fig.savefig(os.path.join(output_dir, name), dpi=120)
    plt.close(fig)
    return name
