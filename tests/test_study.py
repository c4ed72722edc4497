"""The large-batch study (tools/study/): plan, choices, table, verdicts, a tiny real study."""

import csv
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from study import cli, runners, spec  # noqa: E402
from study import plan as planning
from study import report as study_report  # noqa: E402


def test_both_methods_get_the_same_trials_and_their_scaling_rules():
    plan = planning.first_plan(
        256, [1024, 4096], dict(sgd_rates=["0.1", "0.2"], lars_trials=["3:0.01", "6:0.02"])
    )
    counts = {}
    for run in plan:
        counts[(run.method, run.batch_size)] = counts.get((run.method, run.batch_size), 0) + 1
    assert counts == {
        ("baseline", 256): 2,
        ("sgd", 1024): 2,
        ("lars", 1024): 2,
        ("sgd", 4096): 2,
        ("lars", 4096): 2,
    }
    rates = {
        (r.method, r.batch_size, r.trial): (r.learning_rate, r.trust_coefficient) for r in plan
    }
    # Linear scaling from batch 256: 0.1 * 4096 / 256 = 1.6.
    assert rates[("sgd", 4096, "0.1")] == (pytest.approx(1.6), None)
    assert rates[("baseline", 256, "0.2")] == (pytest.approx(0.2), None)
    # Square-root scaling from batch 1024: 6 * sqrt(4) = 12, eta unchanged.
    assert rates[("lars", 4096, "6:0.02")] == (pytest.approx(12.0), 0.02)
    assert rates[("lars", 1024, "3:0.01")] == (pytest.approx(3.0), 0.01)
    assert len({r.name for r in plan}) == len(plan)


def test_a_wider_grid_adds_trials_at_its_points_only_and_they_can_be_chosen():
    given = dict(sgd_rates=["0.1"], nesterov_rates=["0.05", "0.1"])
    wider = {"nesterov": {1024: ["0.2", "0.4"]}}
    plan = planning.first_plan(256, [1024, 4096], given, ["sgd", "nesterov"], wider)
    grid = {}
    for r in plan:
        grid.setdefault((r.batch_size, r.method), []).append(r.learning_rate)
    # 0.05..0.4 at batch 256, scaled by 1024 / 256 = 4.
    assert sorted(grid[(1024, "nesterov")]) == pytest.approx([0.2, 0.4, 0.8, 1.6])
    assert sorted(grid[(4096, "nesterov")]) == pytest.approx([0.8, 1.6])
    assert grid[(1024, "sgd")] == pytest.approx([0.4])
    # A widened trial wins the choice like any other, and only then gets seeds.
    scores = {0.2: 80.0, 0.4: 85.0, 0.8: 86.0, 1.6: 90.0}
    results = {
        r: dict(top1=scores[r.learning_rate])
        for r in plan
        if (r.method, r.batch_size) == ("nesterov", 1024)
    }
    chosen = planning.choose(results)
    assert chosen[("nesterov", 1024)].trial == "0.4"
    (past,) = planning.beyond_edges(chosen, plan)  # 0.4 is the new edge
    assert past.learning_rate == pytest.approx(3.2)
    (seed2,) = planning.more_seeds(chosen, [1024], 2)
    assert (seed2.learning_rate, seed2.seed) == (pytest.approx(1.6), 2)


def test_run_flags_follow_each_recipe():
    # Goyal et al.'s 90 epochs: warmup 5, decays at 30, 60 and 80.
    goyal = spec.Run("sgd", 1024, 0.4, None, 1, "0.1").flags(90.0, 5.0)
    assert "--step_epochs=30,60,80" in goyal and "--warmup_epochs=5.0" in goyal
    sgd = spec.Run("sgd", 1024, 0.4, None, 1, "0.1").flags(19.0, 2.0)
    assert "--step_epochs=7,13,17" in sgd
    assert "--optimizer=sgd" in sgd and "--schedule=step" in sgd
    base = spec.Run("baseline", 256, 0.1, None, 1, "0.1").flags(17.0, 2.0)
    assert "--warmup_epochs=0.0" in base and "--step_epochs=5,11,15" in base
    lars = spec.Run("lars", 1024, 3.0, 0.01, 2, "3:0.01").flags(9.0, 2.0)
    assert {
        "--optimizer=lars",
        "--schedule=poly",
        "--poly_power=2",
        "--seed=2",
        "--trust_coefficient=0.01",
        "--warmup_epochs=2.0",
    } <= set(lars)


def test_choice_uses_the_held_out_accuracy_and_first_seed_only():
    a = spec.Run("lars", 8192, 3.0, 0.01, 1, "1.5:0.01")
    b = spec.Run("lars", 8192, 6.0, 0.01, 1, "3:0.01")
    c = spec.Run("lars", 8192, 6.0, 0.02, 1, "3:0.02")
    b2 = spec.Run("lars", 8192, 3.0, 0.01, 2, "1.5:0.01")
    s = spec.Run("sgd", 8192, 3.2, None, 1, "0.1")
    results = {
        a: dict(top1=0.80, test_top1=0.90),  # best on test, not on the held-out part
        b: dict(top1=0.85, test_top1=0.84),
        c: None,  # diverged
        b2: dict(top1=0.99, test_top1=0.99),  # an extra seed cannot sway the choice
        s: None,
    }
    chosen = planning.choose(results)
    assert chosen == {("lars", 8192): b}
    s1 = spec.Run("sgd", 1024, 0.4, None, 1, "0.1")
    base = spec.Run("baseline", 256, 0.1, None, 1, "0.1")
    picks = {**chosen, ("sgd", 8192): s, ("sgd", 1024): s1, ("baseline", 256): base}
    extra = planning.more_seeds(picks, [8192], 3)
    assert sorted((r.method, r.batch_size, r.seed) for r in extra) == [
        ("lars", 8192, 2),
        ("lars", 8192, 3),
        ("sgd", 8192, 2),
        ("sgd", 8192, 3),
    ]
    # The full forms: every batch size, and the baseline.
    every = planning.more_seeds(picks, [1024, 8192], 2, baseline=True)
    assert sorted((r.method, r.batch_size, r.seed) for r in every) == [
        ("baseline", 256, 2),
        ("lars", 8192, 2),
        ("sgd", 1024, 2),
        ("sgd", 8192, 2),
    ]


def test_the_sweep_finishes_each_batch_size_seeds_and_all_before_the_next():
    plan = planning.first_plan(
        256, [1024, 4096], dict(sgd_rates=["0.1", "0.2"], lars_trials=["1:0.02", "2:0.02"])
    )
    calls = []

    def run_all(runs):  # held-out accuracy: the larger rate wins, except LARS at 4096
        calls.append(sorted((r.method, r.batch_size, r.trial, r.seed) for r in runs))
        return {
            r: dict(
                top1=(
                    r.learning_rate
                    if (r.method, r.batch_size) != ("lars", 4096)
                    else -r.learning_rate
                )
            )
            for r in runs
        }

    results = planning.sweep(plan, [1024, 4096], True, 2, run_all)
    assert [[c[:2] + c[3:] for c in group] for group in calls] == [
        [("baseline", 256, 1)] * 2,
        [("baseline", 256, 2)],
        [("lars", 1024, 1)] * 2 + [("sgd", 1024, 1)] * 2,
        [("lars", 1024, 2), ("sgd", 1024, 2)],
        [("lars", 4096, 1)] * 2 + [("sgd", 4096, 1)] * 2,
        [("lars", 4096, 2), ("sgd", 4096, 2)],
    ]
    # Seed 2 repeats the trial chosen at its own batch size.
    assert calls[3] == [("lars", 1024, "2:0.02", 2), ("sgd", 1024, "0.2", 2)]
    assert calls[5] == [("lars", 4096, "1:0.02", 2), ("sgd", 4096, "0.2", 2)]
    assert len(results) == planning.planned_total(plan, [1024, 4096], True, 2) == 15
    # The reduced form: seeds at the largest batch only, after its trials.
    calls.clear()
    results = planning.sweep(plan, [1024, 4096], False, 3, run_all)
    assert [len(group) for group in calls] == [2, 0, 4, 0, 4, 4]
    assert len(results) == planning.planned_total(plan, [1024, 4096], False, 3) == 14


def test_table_reports_the_chosen_trials_test_accuracy_over_seeds():
    a = spec.Run("lars", 8192, 6.0, 0.01, 1, "3:0.01")
    a2 = spec.Run("lars", 8192, 6.0, 0.01, 2, "3:0.01")
    worse = spec.Run("lars", 8192, 3.0, 0.01, 1, "1.5:0.01")
    base = spec.Run("baseline", 256, 0.1, None, 1, "0.1")
    results = {
        a: dict(top1=0.9, test_top1=0.88, steps=36),
        a2: dict(top1=0.5, test_top1=0.86, steps=36),
        worse: dict(top1=0.7, test_top1=0.95, steps=36),
        base: dict(top1=0.92, test_top1=0.91, steps=900),
        spec.Run("sgd", 8192, 3.2, None, 1, "0.1"): None,
    }  # diverged
    text = study_report.table(results, planning.choose(results), 256, [8192])
    lines = text.splitlines()
    lars = next(line for line in lines if "LARS" in line)
    assert "lr 3 @1K, eta 0.01" in lars and "| 90.00 |" in lars
    assert f"87.00 ± {100 * math.sqrt(2e-4):.2f} (2 seeds)" in lars  # mean, sample std
    assert "every trial diverged" in next(line for line in lines if "linear scaling" in line)
    assert "| 91.00 |" in next(line for line in lines if "baseline" in line)


def test_differences_are_judged_against_the_seeds_spread():
    far = study_report.verdict([0.90, 0.92], [0.85, 0.86])
    near = study_report.verdict([0.90, 0.92], [0.91, 0.95])
    assert far.startswith("exceeds the spread") and near.startswith("within the spread")
    assert study_report.verdict([0.85, 0.86], [0.90, 0.92]) == far  # either side higher
    assert study_report.verdict([0.90], [0.10, 0.11]).startswith("one seed")
    scores = {
        ("lars", 4096): [0.90, 0.92],
        ("sgd", 4096): [0.85, 0.86],
        ("nesterov", 4096): [0.91, 0.95],
        ("sgd", 1024): [0.9],
    }
    rows = study_report.differences(scores, [1024, 4096], ["sgd", "nesterov", "lars"])
    # 91.0 - 85.5 = +5.50; 91.0 - 93.0 = -2.00; 93.0 - 85.5 = +7.50 (by hand).
    assert rows == [
        f"| 4096 | lars - nesterov: -2.00 | {near} |",
        f"| 4096 | lars - sgd: +5.50 | {far} |",
        f"| 4096 | nesterov - sgd: +7.50 | {far} |",
    ]


def test_a_study_under_way_says_what_is_missing():
    base = spec.Run("baseline", 256, 0.1, None, 1, "0.1")
    sgd = spec.Run("sgd", 1024, 0.4, None, 1, "0.1")
    results = {
        base: dict(top1=0.92, test_top1=0.91, steps=900),
        sgd: dict(top1=0.90, test_top1=0.905, steps=240),
    }
    planned = {
        ("baseline", 256): 3,
        ("sgd", 1024): 3,
        ("lars", 1024): 3,
        ("sgd", 4096): 3,
        ("lars", 4096): 3,
    }
    text = study_report.table(
        results, planning.choose(results), 256, [1024, 4096], planned=planned
    )
    rows = {
        tuple(c.strip() for c in line.split("|")[1:4]): line
        for line in text.splitlines()
        if line.startswith("| 1024 |") or line.startswith("| 4096 |")
    }
    assert (
        "lr 0.1 @256 (best of 1 of 3 trials so far)"
        in rows[("1024", "26K", study_report.LABELS["sgd"])]
    )
    assert "| not run yet |" in rows[("4096", "102K", study_report.LABELS["lars"])]
    # 91.0 - 90.5 = 0.5 points: within 1 at 1024, and 4096 is still to come.
    assert f"| {study_report.LABELS['sgd']} | 1024 (not yet run at 4096) |" in text
    assert f"| {study_report.LABELS['lars']} | not run yet |" in text


def test_report_only_writes_the_outputs_from_the_records_alone(tmp_path):
    pytest.importorskip("matplotlib")
    args = [
        "--baseline_batch=20",
        "--batch_sizes=100,200",
        "--sgd_rates=0.1,0.2",
        "--lars_trials=1:0.01,2:0.01",
        "--seeds=2",
        "--epochs=3",
        "--warmup_epochs=1",
    ]
    plan = planning.first_plan(
        20, [100, 200], dict(sgd_rates=["0.1", "0.2"], lars_trials=["1:0.01", "2:0.01"])
    )
    runs = tmp_path / "runs"
    # Records of 4 of the 10 first-seed runs, one of them diverged; as the
    # trainer writes them (summary, flags, history).
    for i, run in enumerate(plan[:4]):
        folder = runs / run.name
        folder.mkdir(parents=True)
        if i == 3:
            (folder / "diverged.txt").write_text("loss is NaN at step 2\n")
            continue
        # Run 1 was resumed (its time in all recorded), run 2 resumed from a
        # backup that did not record its time.
        resumed = [
            {},
            dict(resumed_from_epoch=1, wall_seconds_in_all=25.0),
            dict(resumed_from_epoch=2, wall_seconds_in_all=None),
        ][i]
        (folder / "summary.json").write_text(
            json.dumps(
                dict(
                    top1=0.5 + i / 10,
                    test_top1=0.4 + i / 10,
                    test_loss=1.0,
                    steps=30,
                    wall_seconds=9.0,
                    images_per_second=100.0,
                    **resumed,
                )
            )
        )
        (folder / "flags.json").write_text(
            json.dumps(dict(flags=dict(train_examples=1000, eval_examples=300, test_examples=200)))
        )
        (folder / "history.csv").write_text("epoch,loss,val_accuracy\n0,2.0,0.3\n1,1.5,0.5\n")
    docs = tmp_path / "docs"
    result = run_study(
        f"--runs_dir={runs}", f"--output_dir={docs}", "--report_only", *args, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(docs / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["diverged"] for r in rows) == ["False", "False", "False", "True"]
    times = {
        (r["method"], r["trial"]): (r["wall_seconds"], r["resumed_from_epoch"])
        for r in rows
        if r["diverged"] == "False"
    }
    assert times == {
        (run.method, run.trial): time
        for run, time in zip(plan, [("9.0", ""), ("25.0", "1"), ("9.0", "2")])
    }
    text = (docs / "results.md").read_text()
    # 10 first-seed runs, then (the reduced form) seed 2 of both methods' chosen
    # trials at the largest batch.
    assert "**Under way: 4 of its 12 runs recorded**" in text
    assert "1,000 training images" in text and "300 held-out" in text
    assert "Machines: not recorded (3 runs)." in text  # records made before summaries said
    assert "| not run yet |" in text and (docs / "accuracy_vs_batch.png").exists()
    assert not any(runs.glob("*/train.log"))  # nothing ran
    empty = run_study(
        f"--runs_dir={tmp_path / 'none'}",
        f"--output_dir={docs}",
        "--report_only",
        *args,
        timeout=120,
    )
    assert empty.returncode != 0
    assert empty.stderr.strip().splitlines()[-1] == (
        f"large_batch_study: error: --report_only: no run of this study is recorded in "
        f"{tmp_path / 'none'}: run the study first, or give its --runs_dir"
    )


def test_a_history_with_an_epoch_logged_twice_reads_one_row_an_epoch(tmp_path):
    # Records made before the trainer dropped the row of a stopped epoch's part.
    run = spec.Run("lars", 1024, 4.0, 0.02, 1, "4:0.02")
    (tmp_path / run.name).mkdir()
    (tmp_path / run.name / "history.csv").write_text(
        "epoch,loss,val_accuracy\n0,2.0,0.3\n1,1.6,0.4\n1,1.5,0.5\n2,1.2,0.6\n"
    )
    rows = study_report.history(str(tmp_path), run)
    assert [(r["epoch"], r["loss"]) for r in rows] == [(0, 2.0), (1, 1.5), (2, 1.2)]


def test_a_resumed_run_keeps_the_log_of_its_first_part(tmp_path):
    run = spec.Run("lars", 1024, 2.0, 0.02, 1, "2:0.02")
    run_dir = tmp_path / run.name
    run_dir.mkdir()
    (run_dir / "train.log").write_text("epoch 1 of 15 ... stopped by SIGTERM\n")
    code, tail = runners.run_logged(
        [sys.executable, "-c", "print('resumed from epoch 2')"], run, str(run_dir)
    )
    assert code == 0 and tail.endswith("resumed from epoch 2\n")
    assert (run_dir / "train.log").read_text() == (
        "epoch 1 of 15 ... stopped by SIGTERM\nresumed from epoch 2\n"
    )
    # A failure names the run and shows the log's end.
    with pytest.raises(RuntimeError, match=r"lars_b1024_lr2_eta0.02_s1 failed \(exit 3\)"):
        runners.run_logged([sys.executable, "-c", "import sys; sys.exit(3)"], run, str(run_dir))
    # A run stopped by SIGTERM says how to go on (tf-lars-train's exit status 75).
    from tf_lars.training import faults

    assert runners.PREEMPTED_EXIT_CODE == faults.PREEMPTED_EXIT_CODE
    with pytest.raises(RuntimeError, match="stopped .SIGTERM.* run the same command to resume"):
        runners.run_logged([sys.executable, "-c", "import sys; sys.exit(75)"], run, str(run_dir))


def test_a_bad_trainer_flag_fails_before_any_run(tmp_path):
    result = run_study(
        f"--runs_dir={tmp_path / 'runs'}",
        f"--output_dir={tmp_path / 'docs'}",
        "--dry_run",
        "--trainer_flags=--model=nosuch",
        timeout=120,
    )
    assert result.returncode != 0
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "large_batch_study: error: --trainer_flags: flag --model=nosuch: value should be one "
            "of <resnet50|"
        )
    )
    assert not (tmp_path / "runs").exists()


def test_a_chosen_trial_on_its_grids_edge_gets_one_run_a_step_past_it():
    plan = planning.first_plan(
        256,
        [2048, 4096],
        dict(
            sgd_rates=["0.05", "0.1", "0.2"],
            lars_trials=["1:0.02", "2:0.02", "4:0.02", "2:0.01"],
            nesterov_rates=["0.05", "0.1", "0.2"],
        ),
        ["sgd", "nesterov", "lars"],
    )
    pick = {(r.method, r.batch_size, r.trial): r for r in plan}
    chosen = {
        ("baseline", 256): pick[("baseline", 256, "0.05")],  # not a large batch
        ("sgd", 2048): pick[("sgd", 2048, "0.1")],  # inside its grid
        ("nesterov", 2048): pick[("nesterov", 2048, "0.05")],  # its lowest
        ("nesterov", 4096): pick[("nesterov", 4096, "0.2")],  # its highest
        ("lars", 2048): pick[("lars", 2048, "2:0.01")],  # alone with its eta
        ("lars", 4096): pick[("lars", 4096, "1:0.02")],
    }  # lowest with its eta
    edges = {(r.method, r.batch_size): r for r in planning.beyond_edges(chosen, plan)}
    assert sorted(edges) == [("lars", 4096), ("nesterov", 2048), ("nesterov", 4096)]
    # A step is the ratio to the neighbour: 0.05 / 0.1 below, 0.2 / 0.1 above;
    # the linear rule from 256 and LARS's square root from 1024 as in the grid.
    assert (edges[("nesterov", 2048)].trial, edges[("nesterov", 2048)].learning_rate) == (
        "0.025",
        pytest.approx(0.025 * 2048 / 256),
    )
    assert (edges[("nesterov", 4096)].trial, edges[("nesterov", 4096)].learning_rate) == (
        "0.4",
        pytest.approx(0.4 * 4096 / 256),
    )
    lars = edges[("lars", 4096)]
    assert (lars.trial, lars.learning_rate, lars.trust_coefficient, lars.seed) == (
        "0.5:0.02",
        pytest.approx(0.5 * 2),
        0.02,
        1,
    )
    assert cli.edges_dir_of("docs/study-full15/runs/") == "docs/study-full15/runs-edges"


def test_the_edge_table_says_whether_the_grid_held():
    low = spec.Run("nesterov", 2048, 0.4, None, 1, "0.05")
    high = spec.Run("lars", 2048, 5.657, 0.02, 1, "4:0.02")
    sgd = spec.Run("sgd", 4096, 0.8, None, 1, "0.05")
    results = {low: dict(top1=0.90), high: dict(top1=0.88), sgd: dict(top1=0.70)}
    chosen = {("nesterov", 2048): low, ("lars", 2048): high, ("sgd", 4096): sgd}
    edges = {
        spec.Run("nesterov", 2048, 0.2, None, 1, "0.025"): dict(top1=0.9012, test_top1=0.8876),
        spec.Run("lars", 2048, 11.31, 0.02, 1, "8:0.02"): dict(top1=0.8799, test_top1=0.95),
        spec.Run("sgd", 4096, 0.4, None, 1, "0.025"): None,
    }
    rows = study_report.edge_table(results, chosen, edges).splitlines()[2:]
    assert rows == [
        f"| 2048 | {study_report.LABELS['lars']} | lr 4 @1K, eta 0.02: 88.00 "
        "| lr 8 @1K, eta 0.02 (peak 11.31) | 87.99 | 95.00 | wide enough |",
        f"| 2048 | {study_report.LABELS['nesterov']} | lr 0.05 @256: 90.00 "
        "| lr 0.025 @256 (peak 0.2) | 90.12 | 88.76 | too narrow: better past its edge |",
        f"| 4096 | {study_report.LABELS['sgd']} | lr 0.05 @256: 70.00 "
        "| lr 0.025 @256 (peak 0.4) | diverged | | wide enough |",
    ]


def test_noise_scale_runs_and_their_table():
    from study import noise

    chosen = {
        ("baseline", 256): spec.Run("baseline", 256, 0.1, None, 1, "0.1"),
        ("lars", 1024): spec.Run("lars", 1024, 2.0, 0.02, 1, "2:0.02"),
        ("sgd", 1024): spec.Run("sgd", 1024, 0.4, None, 1, "0.1"),
    }
    runs = planning.noise_scale_runs(chosen, [("baseline", 256), ("lars", 1024), ("lars", 8)])
    assert runs == [chosen[("baseline", 256)], chosen[("lars", 1024)]]
    # 15 epochs of 50,000 // 256 = 195 steps: 2925 steps, every 29 for about 100.
    assert planning.noise_scale_every(runs[0], 15, 50_000) == 29
    assert planning.noise_scale_every(runs[1], 15, 50_000) == 7  # 720 steps
    curve = [[step, float(step), 1.0, float(step)] for step in range(10, 101, 10)]
    summary = dict(noise_scale=dict(curve=curve), steps=100)
    # The measurement nearest each fraction of the 100 steps.
    assert [noise.at_fraction(summary["noise_scale"], 100, f) for f in noise.FRACTIONS] == [
        10.0,
        20.0,  # (25 is as near to 20 as to 30: the first)
        50.0,
        70.0,  # (75: the first of 70 and 80)
        100.0,
    ]
    summary["noise_scale"]["curve"][0][1] = None  # (|G|^2 not positive there)
    assert noise.at_fraction(summary["noise_scale"], 100, 0.1) is None


def test_bad_trials_are_named():
    with pytest.raises(ValueError, match="same number"):
        planning.check_args(
            dict(sgd_rates=["0.1"], lars_trials=["3:0.01", "6:0.01"]), ["sgd", "lars"], [1024]
        )
    with pytest.raises(ValueError, match="--lars_trials: '3' is not LR:ETA"):
        planning.check_args(dict(sgd_rates=["0.1"], lars_trials=["3"]), ["sgd", "lars"], [1024])
    with pytest.raises(ValueError, match="--batch_sizes"):
        planning.check_args(
            dict(sgd_rates=["0.1"], lars_trials=["3:0.01"]), ["sgd", "lars"], ["8k"]
        )


TINY = [
    "--baseline_batch=20",
    "--batch_sizes=100",
    "--sgd_rates=0.1",
    "--lars_trials=1:0.01",
    "--seeds=2",
    "--epochs=3",
    "--warmup_epochs=1",
    "--trainer_flags=--eval_batch_size=20,--shuffle_buffer=100,--precise_bn_images=200",
]


def run_study(*args, timeout=600, python=sys.executable, **env):
    command = [python, os.path.join(ROOT, "tools", "large_batch_study.py"), *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", **env),
    )


def check_study(docs, runs):
    """The outputs of a TINY study on 200 training, 60 held-out, 40 test images."""
    with open(docs / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["method"], r["batch_size"], r["seed"]) for r in rows) == [
        ("baseline", "20", "1"),
        ("lars", "100", "1"),
        ("lars", "100", "2"),
        ("sgd", "100", "1"),
        ("sgd", "100", "2"),
    ]
    for r in rows:
        assert r["diverged"] == "False"
        # The CSV carries each run's own figures, and the chosen trial is the
        # best of its point on the held-out images (first seeds).
        (summary,) = runs.glob(f"{r['method']}_b{r['batch_size']}_*_s{r['seed']}/summary.json")
        summary = json.loads(summary.read_text())
        assert float(r["holdout_top1"]) == round(summary["top1"], 4)
        assert float(r["test_top1"]) == round(summary["test_top1"], 4)
        if r["chosen"] == "True" and r["seed"] == "1":
            assert float(r["holdout_top1"]) == max(
                float(o["holdout_top1"])
                for o in rows
                if o["seed"] == "1"
                and (o["method"], o["batch_size"]) == (r["method"], r["batch_size"])
            )
        # Each run names the machine it ran on.
        assert r["machine"].startswith(f"{len(os.sched_getaffinity(0))} CPU cores"), r
        # 200 training images: 3 epochs are 3 * (200 // batch) steps.
        assert int(r["steps"]) == 3 * (200 // int(r["batch_size"]))
    results = (docs / "results.md").read_text()
    assert "200 training images" in results and "60 held-out" in results
    assert "40 test images" in results
    lines = [line for line in results.splitlines() if line.startswith("| 100 |")]
    assert sum(any(label in line for label in study_report.LABELS.values()) for line in lines) == 2
    # Both methods have 2 seeds at 100: their difference is judged.
    (compared,) = [line for line in lines if "lars - sgd" in line]
    assert "the seeds' ranges" in compared
    assert "BatchNorm statistics recomputed from 200 training images" in results
    for name in ("accuracy_vs_batch.png", "curves_b100.png"):
        png = (docs / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # Each run evaluated the held-out part every epoch (its curve).
    (lars_run,) = runs.glob("lars_b100_*_s1")
    history = (lars_run / "history.csv").read_text().splitlines()
    assert len(history) == 4 and "val_accuracy" in history[0]


@pytest.mark.heavy
def test_a_tiny_study_end_to_end(tmp_path):
    """Real shards, real trainer runs, real plots: 5 short runs."""
    pytest.importorskip("matplotlib")
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the trainer needs TensorFlow")
    from test_tools import generated_idx, run_tool

    idx = generated_idx(tmp_path / "idx", 260, 40)
    data = tmp_path / "data"
    built = run_tool(
        "build_fashion_mnist_tfrecords.py",
        f"--output_dir={data}",
        f"--idx_dir={idx}",
        "--holdout=60",
        "--train_shards=2",
        "--validation_shards=1",
    )
    assert built.returncode == 0, built.stderr[-2000:]
    args = [
        f"--data_dir={data}",
        f"--runs_dir={tmp_path / 'runs'}",
        f"--output_dir={tmp_path / 'docs'}",
        *TINY,
    ]
    result = run_study(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    check_study(tmp_path / "docs", tmp_path / "runs")

    # Finished runs are not run again.
    (summary,) = (tmp_path / "runs").glob("sgd_b100_*_s2/summary.json")
    before = os.path.getmtime(summary)
    again = run_study(*args, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert os.path.getmtime(summary) == before

    # --noise_scale: the chosen baseline and LARS at 100 again, measuring.
    noise = run_study(*args, "--noise_scale", timeout=300)
    assert noise.returncode == 0, noise.stderr[-3000:]
    measured = sorted((tmp_path / "runs-noise").iterdir())
    assert [d.name.split("_")[:2] for d in measured] == [["baseline", "b20"], ["lars", "b100"]]
    for run_dir in measured:
        flags = json.loads((run_dir / "flags.json").read_text())["flags"]
        # 30 and 6 steps: fewer than 100, so a measurement every step.
        assert flags["log_noise_scale"] and flags["noise_scale_every_steps"] == 1
        curve = json.loads((run_dir / "summary.json").read_text())["noise_scale"]["curve"]
        assert len(curve) == 3 * (200 // flags["batch_size"])
    results = (tmp_path / "docs" / "results.md").read_text()
    assert "Gradient noise scale: B_simple" in results and "![noise_scale.png]" in results
    assert (tmp_path / "docs" / "noise_scale.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.heavy
def test_a_tiny_study_in_memory_on_jax(tmp_path):
    """--engine=arrays under KERAS_BACKEND=jax: the GPU machine's way, on the CPU.

    Where TensorFlow is not installed (.venv-jax), as on the GPU machine; with
    --jobs=2: two runs at a time, each a process of the tool that trains in
    memory (its output in the run's train.log).
    """
    import jax_only
    from test_tools import generated_idx

    idx = generated_idx(tmp_path / "idx", 260, 40)
    result = run_study(
        "--engine=arrays",
        f"--idx_dir={idx}",
        "--holdout=60",
        f"--runs_dir={tmp_path / 'runs'}",
        f"--output_dir={tmp_path / 'docs'}",
        "--jobs=2",
        *TINY,
        python=jax_only.command(),
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    check_study(tmp_path / "docs", tmp_path / "runs")
    run_dirs = list((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 5 and all((d / "train.log").exists() for d in run_dirs)
    assert "Keras jax backend" in (tmp_path / "docs" / "results.md").read_text()
    (summary,) = (tmp_path / "runs").glob("lars_b100_*_s1/summary.json")
    assert json.loads(summary.read_text())["backend"] == "jax"


@pytest.mark.heavy
def test_edge_checks_run_past_the_edges_beside_the_study(tmp_path):
    """--edge_checks on a grid of 2 trials (every choice on an edge), with
    --jobs=2: each run a process of the tool, which must write where it is told."""
    pytest.importorskip("matplotlib")
    from test_tools import generated_idx

    idx = generated_idx(tmp_path / "idx", 260, 40)
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    result = run_study(
        "--engine=arrays",
        f"--idx_dir={idx}",
        "--holdout=60",
        f"--runs_dir={runs}",
        f"--output_dir={docs}",
        "--jobs=2",
        "--edge_checks",
        "--baseline_batch=20",
        "--batch_sizes=100",
        "--sgd_rates=0.1,0.2",
        "--lars_trials=1:0.01,2:0.01",
        "--seeds=1",
        "--epochs=1",
        "--warmup_epochs=0.5",
        "--trainer_flags=--eval_batch_size=20",
        JAX_PLATFORMS="cpu",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len([d for d in runs.iterdir() if (d / "summary.json").exists()]) == 6
    with open(docs / "runs.csv") as f:
        chosen = {
            r["method"]: float(r["trial"].split(":")[0])
            for r in csv.DictReader(f)
            if r["chosen"] == "True" and r["method"] != "baseline"
        }
    # One step past each choice: half the lower rate, or twice the higher.
    past = {m: {0.1: 0.05, 0.2: 0.4, 1.0: 0.5, 2.0: 4.0}[r] for m, r in chosen.items()}
    edges_dir = tmp_path / "runs-edges"
    names = sorted(d.name for d in edges_dir.iterdir() if (d / "summary.json").exists())
    assert names == sorted(
        [
            f"sgd_b100_lr{past['sgd'] * 100 / 256:.4g}_s1",
            f"lars_b100_lr{past['lars'] * math.sqrt(100 / 1024):.4g}_eta0.01_s1",
        ]
    )
    text = (docs / "results.md").read_text()
    edge_rows = [
        line for line in text.splitlines() if "a step past the edge" in line or "(peak " in line
    ]
    assert len(edge_rows) == 3 and study_report.EDGES_NOTE in text
    for name in names:
        summary = json.loads((edges_dir / name / "summary.json").read_text())
        assert any(
            f"| {100 * summary['top1']:.2f} | {100 * summary['test_top1']:.2f} |" in row
            for row in edge_rows
        ), (name, edge_rows)
    # --report_only reads them back from the records alone.
    (docs / "results.md").unlink()
    again = run_study(
        "--engine=arrays",
        f"--idx_dir={idx}",
        "--holdout=60",
        f"--runs_dir={runs}",
        f"--output_dir={docs}",
        "--report_only",
        "--baseline_batch=20",
        "--batch_sizes=100",
        "--sgd_rates=0.1,0.2",
        "--lars_trials=1:0.01,2:0.01",
        "--seeds=1",
        "--epochs=1",
        "--warmup_epochs=0.5",
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert (docs / "results.md").read_text().split("\n", 1)[1] == text.split("\n", 1)[1]


def records(method, batch, *seeds):
    """Hand-made records: the chosen trial of `method` at `batch`, one test
    top-1 a seed (held-out top-1 the same)."""
    eta, trial = (0.02, "1:0.02") if method == "lars" else (None, "0.1")
    return {
        spec.Run(method, batch, 0.1, eta, s, trial): dict(top1=t, test_top1=t, steps=1)
        for s, t in enumerate(seeds, start=1)
    }


def test_the_verdicts_on_methods_above_level_with_and_below_the_baseline():
    # Baseline 90.00 (two seeds). SGD: above at 1024, level at 2048 (0.50
    # below), exactly a point below at 4096 (within, by the rule's <=),
    # 1.50 below at 8192. Nesterov: more than a point below everywhere. LARS:
    # below at 1024, level at 4096: the largest batch within a point is the
    # largest one where it is within, even past one where it is not.
    results = {
        **records("baseline", 256, 0.899, 0.901),
        **records("sgd", 1024, 0.91, 0.92),
        **records("sgd", 2048, 0.894, 0.896),
        **records("sgd", 4096, 0.889, 0.891),
        **records("sgd", 8192, 0.88, 0.89),
        **records("nesterov", 1024, 0.88, 0.886),
        **records("nesterov", 8192, 0.5, 0.6),
        **records("lars", 1024, 0.85, 0.89),
        **records("lars", 4096, 0.90, 0.902),
    }
    sizes = [1024, 2048, 4096, 8192]
    text = study_report.table(
        results, planning.choose(results), 256, sizes, ["sgd", "nesterov", "lars"]
    )
    largest = {
        line.split(" | ")[0].strip("| "): line.split(" | ")[1].strip(" |")
        for line in text.splitlines()
        if line.startswith("| ") and " | " in line and line.count("|") == 3
    }
    assert largest[study_report.LABELS["sgd"]] == "4096"
    assert largest[study_report.LABELS["nesterov"]] == "none"
    assert largest[study_report.LABELS["lars"]] == "4096"
    # Differences against the seeds' spread, by hand: at 1024 LARS 87.00
    # (85..89) - SGD 91.50 (91..92): ranges apart; - Nesterov 88.30 (88..88.6):
    # ranges overlap.
    assert "| 1024 | lars - nesterov: -1.30 | within the spread" in text
    assert "| 1024 | lars - sgd: -4.50 | exceeds the spread" in text
    assert "| 8192 | nesterov - sgd: -33.50 | exceeds the spread" in text


@pytest.mark.heavy
def test_two_machines_share_a_sweep_each_run_claimed_by_one(tmp_path):
    """--shard=0/2 and --shard=1/2 at once on one runs folder (in memory):
    every run made once, by the shard that claimed it; shard 0 reports."""
    from test_tools import generated_idx

    idx = generated_idx(tmp_path / "idx", 260, 40)
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    args = [
        "--engine=arrays",
        f"--idx_dir={idx}",
        "--holdout=60",
        f"--runs_dir={runs}",
        f"--output_dir={docs}",
        "--shard_poll_seconds=0.5",
        "--sgd_rates=0.1,0.2",
        "--lars_trials=1:0.01,2:0.01",
        *[a for a in TINY if "_rates" not in a and "_trials" not in a],
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    shards = [
        subprocess.Popen(
            [
                sys.executable,
                os.path.join(ROOT, "tools", "large_batch_study.py"),
                *args,
                f"--shard={i}/2",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [shard.communicate(timeout=600) for shard in shards]
    for shard, (_out, err) in zip(shards, outputs):
        assert shard.returncode == 0, err[-3000:]
    made = {
        d.name: json.loads((d / "claim.json").read_text())["shard"]
        for d in runs.iterdir()
        if (d / "summary.json").exists()
    }
    # 2 baseline trials, 2 SGD and 2 LARS trials at 100, a second seed of each
    # chosen trial at 100: 8 runs, every one claimed once, half by each shard.
    assert len(made) == len(list(runs.iterdir())) == 8
    assert sorted(made.values()) == ["0/2"] * 4 + ["1/2"] * 4
    assert "shard 1/2 done" in outputs[1][0] and (docs / "results.md").exists()
    with open(docs / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 8


CLAIM_RACE = """
import sys
sys.path.insert(0, sys.argv[1])
from study import runners
print(runners.claim(sys.argv[2], (int(sys.argv[3]), 8)))
"""


def test_a_run_is_claimed_by_one_shard_only(tmp_path):
    # 8 processes, one per shard, race for the same run: one wins. The winner
    # keeps it on a second try (a requeued job); the others never get it.
    racers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CLAIM_RACE,
                os.path.join(ROOT, "tools"),
                str(tmp_path / "run"),
                str(i),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    won = [i for i, p in enumerate(racers) if p.communicate(timeout=60)[0].strip() == "True"]
    assert len(won) == 1
    claimed = json.loads((tmp_path / "run" / "claim.json").read_text())
    assert claimed["shard"] == f"{won[0]}/8" and claimed["host"] and claimed["pid"]
    assert runners.claim(str(tmp_path / "run"), (won[0], 8))
    assert not runners.claim(str(tmp_path / "run"), ((won[0] + 1) % 8, 8))
