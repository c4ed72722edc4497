"""The documentation's examples cannot rot: every `python` block of the
README and of docs/ runs, and every `tf-lars-train` command line shown is
parsed by the trainer's own flag parser. (The site itself is built with
warnings as errors by tools/test.sh.)"""

import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(
    [os.path.join(ROOT, "README.md")]
    + glob.glob(os.path.join(ROOT, "docs", "*.md"))
    + glob.glob(os.path.join(ROOT, "docs", "guides", "*.md"))
)
FENCE = re.compile(r"^```(\S*)\n(.*?)^```", re.S | re.M)


def blocks(path, languages):
    with open(path) as f:
        return [body for lang, body in FENCE.findall(f.read()) if lang in languages]


def name(path):
    return os.path.relpath(path, ROOT)


WITH_PYTHON = [p for p in PAGES if blocks(p, {"python"})]


@pytest.mark.parametrize("page", WITH_PYTHON, ids=[name(p) for p in WITH_PYTHON])
def test_every_python_block_runs(page, tmp_path):
    """A page's blocks run in order in one fresh interpreter, as a reader
    would paste them."""
    code = "\n\n".join(blocks(page, {"python"}))
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"{name(page)}:\n{result.stderr[-3000:]}"


def trainer_commands(text):
    """Each `tf-lars-train` command of a shell block: its arguments."""
    joined = text.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        while words and re.match(r"^[A-Z_]+=", words[0]):  # KERAS_BACKEND=jax ...
            words = words[1:]
        if words and words[0].endswith("tf-lars-train"):
            commands.append(words[1:])
    return commands


SHOWN = [
    (page, args)
    for page in PAGES
    for block in blocks(page, {"sh", "bash"})
    for args in trainer_commands(block)
]


def test_the_pages_show_trainer_commands():
    assert len(SHOWN) >= 8, SHOWN
    assert {name(p) for p, _ in SHOWN} >= {"README.md", "docs/tutorial.md"}


@pytest.mark.parametrize(
    "page,args", SHOWN, ids=[f"{name(p)}:{i}" for i, (p, _) in enumerate(SHOWN)]
)
def test_every_trainer_command_shown_parses(page, args):
    from tf_lars.training import config, run

    cfg = config.from_args(args)  # absl's parser, the flagfiles expanded
    run.check_config(cfg)
    assert cfg.model_dir, f"{name(page)}: {args} has no --model_dir"


def test_a_wrong_flag_in_a_page_would_fail():
    from absl import flags

    from tf_lars.training import config

    (args,) = trainer_commands("tf-lars-train --flagfile=smoke --bogus_flag=1 --model_dir=x\n")
    with pytest.raises(flags.Error, match="bogus_flag"):
        config.from_args(args)


def test_the_readmes_links_reach_files():
    """README.md is outside the Sphinx build, which checks the pages' links."""
    with open(os.path.join(ROOT, "README.md")) as f:
        targets = re.findall(r"\]\(([^)#\s]+)\)", f.read())
    local = [t for t in targets if "://" not in t]
    assert len(local) >= 10
    missing = [t for t in local if not os.path.exists(os.path.join(ROOT, t))]
    assert not missing, missing
