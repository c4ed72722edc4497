"""Running the study's plan: each run a process of the trainer (or of this
tool, for in-memory runs), its record kept in its folder, several at a time
with `jobs`, and a sweep shared by machines through claims on the runs."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Optional

from absl import logging

from study.plan import Results
from study.spec import Run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREEMPTED_EXIT_CODE = 75  # tf-lars-train's exit status after a SIGTERM and a backup


@dataclasses.dataclass
class Setting:
    """What every run of one sweep shares.

    Attributes:
        runs_dir: where each run's folder goes.
        data_dir: the shards (trainer runs).
        info: the shards' `build.json` (its `examples` per split).
        epochs, warmup_epochs: every run's length and large-batch warmup.
        extra: more trainer flags for every run.
        in_memory: an `in_memory.InMemory` (`--engine=arrays`), else None.
        jobs: runs at a time.
        shard: (I, N) of a sweep shared by N machines, else None.
        poll_seconds: how often a shard looks for the others' runs it waits for.
    """

    runs_dir: str
    data_dir: str
    info: dict[str, Any]
    epochs: float
    warmup_epochs: float
    extra: list[str]
    in_memory: Optional[Callable[..., None]] = None
    jobs: int = 1
    shard: Optional[tuple[int, int]] = None
    poll_seconds: float = 30.0

    def elsewhere(self, runs_dir: str) -> Setting:
        return dataclasses.replace(self, runs_dir=runs_dir)


def shard_info(data_dir: str, holdout: int) -> dict[str, Any]:
    """The shards' `build.json`, building the shards first when missing."""
    path = os.path.join(data_dir, "build.json")
    if not os.path.exists(path):
        logging.info(
            "building Fashion-MNIST shards with %d held-out images in %s", holdout, data_dir
        )
        built = subprocess.run(
            [
                sys.executable,
                os.path.join(ROOT, "tools", "build_fashion_mnist_tfrecords.py"),
                f"--output_dir={data_dir}",
                f"--holdout={holdout}",
            ],
            capture_output=True,
            text=True,
        )
        if built.returncode:
            raise ValueError(built.stderr.strip().splitlines()[-1])
    with open(path) as f:
        info: dict[str, Any] = json.load(f)
    if not info.get("holdout"):
        raise ValueError(
            f"--data_dir={data_dir} has no holdout split: build one with "
            "tools/build_fashion_mnist_tfrecords.py --holdout=10000"
        )
    return info


def command(run: Run, run_dir: str, setting: Setting) -> list[str]:
    """The trainer's command line for `run`."""
    counts = setting.info["examples"]
    return [
        sys.executable,
        "-m",
        "tf_lars.train",
        "--flagfile=fashion_mnist_study",
        f"--data_dir={setting.data_dir}",
        f"--model_dir={run_dir}",
        f"--train_examples={counts['train']}",
        f"--eval_examples={counts['holdout']}",
        f"--test_examples={counts['validation']}",
        *run.flags(setting.epochs, setting.warmup_epochs),
        *setting.extra,
    ]


def run_logged(
    cmd: list[str], run: Run, run_dir: str, cwd: Optional[str] = None, **env: str
) -> tuple[int, str]:
    """Runs `cmd` for `run`, its output added to `run_dir/train.log` (a run
    resumed from its backup keeps the log of its first part); the exit code and
    the log's end. A failure other than a NaN stop raises, showing that end."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "train.log"), "a") as log:
        code = subprocess.call(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **env),
            cwd=cwd,
        )
    with open(os.path.join(run_dir, "train.log")) as log:
        tail = log.read()[-2000:]
    if code == PREEMPTED_EXIT_CODE:
        raise RuntimeError(
            f"run {run.name} was stopped (SIGTERM) and backed up in "
            f"{run_dir}/backup: run the same command to resume it there"
        )
    if code and "training stopped:" not in tail:
        raise RuntimeError(
            f"run {run.name} failed (exit {code}); its log, {run_dir}/train.log, ends:\n{tail}"
        )
    return code, tail


def run_trainer(run: Run, run_dir: str, setting: Setting) -> None:
    """One run of `tf-lars-train`, its output in `train.log`."""
    code, tail = run_logged(command(run, run_dir, setting), run, run_dir, cwd=ROOT)
    if code:  # NaN loss: a result, not an error.
        with open(os.path.join(run_dir, "diverged.txt"), "w") as f:
            f.write(tail.split("training stopped:")[-1].strip() + "\n")


def run_spec_process(run: Run, run_dir: str, jobs: int) -> None:
    """--jobs with --engine=arrays: `run` in a new process of this tool, same flags."""
    argv = [a for a in sys.argv[1:] if not a.startswith(("--jobs", "--run_spec", "--runs_dir"))]
    cmd = [
        sys.executable,
        sys.argv[0],
        *argv,
        "--jobs=1",
        f"--runs_dir={os.path.dirname(run_dir)}",  # the study's, or its edges' folder
        f"--run_spec={json.dumps(dataclasses.asdict(run))}",
    ]
    # JAX takes 75% of a GPU's memory by default: share it out instead.
    share = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / jobs:.3f}")
    run_logged(cmd, run, run_dir, XLA_PYTHON_CLIENT_MEM_FRACTION=share)


def claim(run_dir: str, shard: tuple[int, int]) -> bool:
    """Claims the run in `run_dir` for shard `I/N` of a shared sweep: True
    when it is this shard's (claimed now, or before by the same shard: a
    requeued job goes on with its own runs), False when another shard holds
    it. The claim is a file created exclusively (O_EXCL), which one machine
    alone can create, also on NFS v3 and later."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "claim.json")
    me = f"{shard[0]}/{shard[1]}"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        with open(path) as f:
            return bool(json.load(f).get("shard") == me)
    with os.fdopen(fd, "w") as f:
        json.dump(
            dict(
                shard=me,
                host=socket.gethostname(),
                pid=os.getpid(),
                time=time.strftime("%Y-%m-%dT%H:%M:%S"),
            ),
            f,
        )
    return True


def execute(run: Run, setting: Setting) -> Optional[dict[str, Any]]:
    """Runs one training (unless done before); its summary, None if it diverged."""
    run_dir = os.path.join(setting.runs_dir, run.name)
    if run not in recorded([run], setting.runs_dir):
        start = time.time()
        if setting.in_memory and setting.jobs > 1:
            run_spec_process(run, run_dir, setting.jobs)
        elif setting.in_memory:
            setting.in_memory(run, run_dir, setting.epochs, setting.warmup_epochs, setting.extra)
        else:
            run_trainer(run, run_dir, setting)
        logging.info("%s: %.0f s", run.name, time.time() - start)
    done = recorded([run], setting.runs_dir)
    if run not in done:
        raise RuntimeError(f"run {run.name} ended without a summary.json in {run_dir}")
    return done[run]


def recorded(runs: list[Run], runs_dir: str) -> Results:
    """`{run: summary or None (diverged)}` for the `runs` recorded in `runs_dir`."""
    out: Results = {}
    for run in runs:
        run_dir = os.path.join(runs_dir, run.name)
        if os.path.exists(os.path.join(run_dir, "diverged.txt")):
            out[run] = None
        elif os.path.exists(os.path.join(run_dir, "summary.json")):
            with open(os.path.join(run_dir, "summary.json")) as f:
                out[run] = json.load(f)
    return out


def recorded_counts(results: Results, runs_dir: str) -> Optional[dict[str, Any]]:
    """The data's sizes as a recorded run's flags.json gives them (None if none has one)."""
    for run in results:
        path = os.path.join(runs_dir, run.name, "flags.json")
        if os.path.exists(path):
            with open(path) as f:
                cfg = json.load(f)["flags"]
            return dict(
                examples=dict(
                    train=cfg["train_examples"],
                    holdout=cfg["eval_examples"],
                    validation=cfg["test_examples"],
                )
            )
    return None


def execute_all(runs: list[Run], setting: Setting, counter: Optional[list[int]] = None) -> Results:
    """`{run: summary}` of `runs`, up to `setting.jobs` at a time.

    In a shared sweep this shard runs its share (`plan.share`), then waits
    for the other shards' runs of `runs` to be recorded (the choice among
    them needs them all), looking every `setting.poll_seconds`.
    `counter`: [runs numbered so far, runs in all], for the log's "run i of n".
    """
    from study.plan import share

    mine = runs
    if setting.shard:  # Its share, less what another shard claimed (a changed N).
        done = recorded(runs, setting.runs_dir)
        mine = [
            r
            for r in share(runs, setting.shard)
            if r in done or claim(os.path.join(setting.runs_dir, r.name), setting.shard)
        ]
    results = _execute_each(mine, setting, counter)
    others = [r for r in runs if r not in mine]
    while others:
        results.update(recorded(others, setting.runs_dir))
        missing = [r for r in others if r not in results]
        if not missing:
            break
        logging.info(
            "waiting for %d runs of the other shards (%s, ...)", len(missing), missing[0].name
        )
        time.sleep(setting.poll_seconds)
    return {run: results[run] for run in runs}


def _execute_each(runs: list[Run], setting: Setting, counter: Optional[list[int]]) -> Results:
    if setting.jobs == 1:
        counter = counter or [0, len(runs)]
        results = {}
        for run in runs:
            counter[0] += 1
            logging.info("run %d of %d: %s", counter[0], counter[1], run.name)
            results[run] = execute(run, setting)
        return results
    # Each run is a process of its own: threads only wait for them.
    with concurrent.futures.ThreadPoolExecutor(setting.jobs) as pool:
        futures = {run: pool.submit(execute, run, setting) for run in runs}
        return {run: future.result() for run, future in futures.items()}
