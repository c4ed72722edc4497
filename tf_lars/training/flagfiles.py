"""Flagfiles by path or short name, with includes resolved beside the file.

absl resolves `--flagfile=` against the working directory, also inside a
flagfile, so one flagfile cannot portably include another. `expand` inlines
every `--flagfile=X` of argv before absl sees it: X is a path, a path
relative to the including file, or the short name of a shipped flagfile
(`resnet50_lars_32k` for `flags/resnet50_lars_32k.cfg`).
"""

import importlib.resources
import os

REPO_FLAGS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "flags"
)


def shipped():
    """`{short name: path}` of the flagfiles that come with tf_lars."""
    folders = [REPO_FLAGS]
    try:
        folders.append(str(importlib.resources.files("tf_lars.flagfiles")))
    except ModuleNotFoundError:
        pass
    found: dict[str, str] = {}
    for folder in folders:
        if os.path.isdir(folder):
            for name in sorted(os.listdir(folder)):
                if name.endswith(".cfg"):
                    found.setdefault(name[:-4], os.path.join(folder, name))
    return found


def resolve(name, relative_to=None):
    candidates = [name]
    if relative_to and not os.path.isabs(name):
        candidates.insert(0, os.path.join(relative_to, name))
    for path in candidates:
        if os.path.isfile(path):
            return path
    short = os.path.basename(name)[:-4] if name.endswith(".cfg") else name
    files = shipped()
    if short in files:
        return files[short]
    raise ValueError(
        f"--flagfile={name}: no such file, nor a shipped flagfile "
        f"(shipped: {', '.join(sorted(files))})"
    )


def read(path, seen=()):
    """The flags of one file, includes inlined; `#` and `//` start comments."""
    if path in seen:
        raise ValueError(f"--flagfile={path} includes itself")
    args = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", "//")):
                continue
            args += expand_one(line, os.path.dirname(path), seen + (path,))
    return args


def expand_one(arg, relative_to=None, seen=()):
    if arg.startswith("--flagfile="):
        return read(resolve(arg.split("=", 1)[1], relative_to), seen)
    return [arg]


def expand(argv):
    """argv with every `--flagfile=` replaced by the flags it holds."""
    try:
        return argv[:1] + [a for arg in argv[1:] for a in expand_one(arg)]
    except (ValueError, OSError) as e:
        raise SystemExit(f"tf-lars-train: error: {e}") from None
