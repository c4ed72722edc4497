"""The study's plots: accuracy against batch size, and the training curves
of the chosen trials at the smallest and the largest batch."""

import os
import statistics

from study.report import chosen_scores, history
from study.spec import METHODS


def plots(
    results,
    chosen,
    runs_dir,
    baseline_batch,
    batch_sizes,
    output_dir,
    methods=("sgd", "lars"),
    epochs=None,
):
    """accuracy_vs_batch.png and curves_b<B>.png for the smallest and largest
    batch size; returns their names."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    scores = chosen_scores(results, chosen)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, label, style in [(m, METHODS[m].label, METHODS[m].style) for m in methods]:
        points = [(b, scores[(method, b)]) for b in batch_sizes if (method, b) in scores]
        if points:
            xs = [b for b, _ in points]
            means = [100 * statistics.mean(v) for _, v in points]
            lows = [m - 100 * min(v) for m, (_, v) in zip(means, points)]
            highs = [100 * max(v) - m for m, (_, v) in zip(means, points)]
            ax.errorbar(xs, means, yerr=[lows, highs], fmt=style, capsize=3, label=label)
    if ("baseline", baseline_batch) in scores:
        seeds = [100 * v for v in scores[("baseline", baseline_batch)]]
        ax.axhline(
            statistics.mean(seeds),
            color="gray",
            ls="--",
            label=f"momentum SGD at batch {baseline_batch}",
        )
        if len(seeds) > 1:  # The band over its seeds.
            ax.axhspan(min(seeds), max(seeds), color="gray", alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.set_xticks(batch_sizes, [f"{b // 1024}K" if b % 1024 == 0 else str(b) for b in batch_sizes])
    ax.set_xlabel("batch size")
    ax.set_ylabel("test top-1 accuracy (%)")
    budget = f"{epochs:g} epochs" if epochs else "same epoch budget"
    ax.set_title(f"Fashion-MNIST, ResNet-8, {budget} at every batch size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    names = ["accuracy_vs_batch.png"]
    fig.savefig(os.path.join(output_dir, names[0]), dpi=120)
    plt.close(fig)

    for batch in sorted({min(batch_sizes), max(batch_sizes)}):
        if not any((m, batch) in chosen for m in methods):
            continue  # (a study under way: nothing recorded there yet)
        names.append(
            _curves(results, chosen, runs_dir, baseline_batch, batch, output_dir, methods, plt)
        )
    return names


def _curves(results, chosen, runs_dir, baseline_batch, largest, output_dir, methods, plt):
    """curves_b<largest>.png: training loss and held-out accuracy per epoch."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for method in [*methods, "baseline"]:
        color = METHODS[method].color
        pick = chosen.get((method, largest if method != "baseline" else baseline_batch))
        if pick is None:
            continue
        for run in results:
            if (run.method, run.batch_size, run.trial) != (
                pick.method,
                pick.batch_size,
                pick.trial,
            ):
                continue
            epochs = history(runs_dir, run)
            x = [row["epoch"] + 1 for row in epochs]
            label = f"{method} b{run.batch_size} seed {run.seed}"
            ls = "-" if run.seed == 1 else ":"
            left.plot(x, [row["loss"] for row in epochs], ls, color=color, label=label)
            evaluated = [
                (row["epoch"] + 1, 100 * row["val_accuracy"])
                for row in epochs
                if "val_accuracy" in row
            ]
            if evaluated:
                right.plot(*zip(*evaluated), ls, color=color, label=label)
    left.set(
        xlabel="epoch",
        ylabel="training loss",
        yscale="log",
        title=f"training loss, chosen trials at batch {largest}",
    )
    right.set(
        xlabel="epoch",
        ylabel="held-out top-1 accuracy (%)",
        title=f"held-out accuracy at batch {largest}",
    )
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    name = f"curves_b{largest}.png"
    fig.savefig(os.path.join(output_dir, name), dpi=120)
    plt.close(fig)
    return name
