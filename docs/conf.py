"""Sphinx configuration of tf_lars's documentation.

Built offline with warnings as errors (tools/test.sh):

    .venv/bin/sphinx-build -W --keep-going -b html docs build/docs

Besides Sphinx's own checks (every internal link and anchor resolves, every
page is in a table of contents), `check_public_api` fails the build when a
public symbol (a name in the `__all__` of a module in `PUBLIC_MODULES`) has
no docstring, leaves one of its arguments unmentioned, or is missing from
the API reference (api.md).
"""

import importlib
import inspect
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tf_lars  # noqa: E402

project = "tf_lars"
author = "the tf_lars authors"
copyright = "2026, the tf_lars authors"
release = version = tf_lars.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
root_doc = "index"
# (study-full15/results.md is included in guides/study.md, not a page of its own)
exclude_patterns = ["_build", "**/runs", "**/runs-*", "results", "study-full15/results.md"]
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]
html_theme = "furo"
html_title = f"tf_lars {release}"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # (Attributes: as fields, not a second description)

# The public API: what the reference documents, every symbol of it.
PUBLIC_MODULES = [
    "tf_lars",
    "tf_lars.schedules",
    "tf_lars.models",
    "tf_lars.noise_scale",
    "tf_lars.monitoring",
    "tf_lars.data.pipeline",
    "tf_lars.data.schema",
    "tf_lars.data.presets",
    "tf_lars.data.preprocessing",
    "tf_lars.data.writer",
    "tf_lars.data.counts",
    "tf_lars.data.arrays",
    "tf_lars.data.fashion_mnist",
    "tf_lars.data.tfds",
    "tf_lars.training.precise_bn",
]


def public_symbols():
    """`[(module name, symbol name, object)]` of every public symbol."""
    out = []
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for symbol in module.__all__:
            obj = getattr(module, symbol)
            if inspect.ismodule(obj) or not (inspect.isclass(obj) or callable(obj)):
                continue  # (subpackages and constants: documented where they live)
            out.append((name, symbol, obj))
    return out


def unmentioned_arguments(obj):
    """The arguments of `obj` (a class: its constructor) its docstring never names."""
    doc = inspect.getdoc(obj) or ""
    target = obj.__init__ if inspect.isclass(obj) else obj
    if not getattr(target, "__module__", "tf_lars").startswith("tf_lars"):
        return []  # (a constructor inherited from Keras: documented there)
    if inspect.isclass(obj) and dataclass_fields(obj):
        names = dataclass_fields(obj)
    else:
        try:
            parameters = inspect.signature(target).parameters.values()
        except (TypeError, ValueError):
            return []
        names = [
            p.name
            for p in parameters
            if p.name not in ("self", "cls") and p.kind is not p.VAR_POSITIONAL
        ]
    init_doc = inspect.getdoc(target) or "" if inspect.isclass(obj) else ""
    text = doc + "\n" + init_doc
    return [n for n in names if not re.search(rf"\b{re.escape(n)}\b", text)]


def dataclass_fields(cls):
    import dataclasses

    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def check_public_api(app):
    """Warns (an error under -W) for each public symbol documented short."""
    from sphinx.util import logging

    log = logging.getLogger("tf_lars.api")
    with open(os.path.join(HERE, "api.md")) as f:
        reference = f.read()
    for module, symbol, obj in public_symbols():
        where = f"{module}.{symbol}"
        if not (inspect.getdoc(obj) or "").strip():
            log.warning(f"public API: {where} has no docstring")
        missing = unmentioned_arguments(obj)
        if missing:
            log.warning(f"public API: {where}: its docstring never names {', '.join(missing)}")
        if f"automodule:: {module}\n" not in reference and f"{where}" not in reference:
            log.warning(f"public API: {where} is missing from api.md")


def markdown_to_rst(app, what, name, obj, options, lines):
    """The docstrings are written in Markdown's inline style (`code`, ```
    fences), as Keras's are; reStructuredText, which autodoc reads, wants
    ``code`` and code-block directives, and reads |x| as a substitution.
    Runs before napoleon, which then reads the Google-style sections."""
    out, fence = [], None
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("```"):
            if fence is None:
                fence = line[: len(line) - len(line.lstrip())]
                language = stripped[3:].strip() or "text"
                out += [f"{fence}.. code-block:: {language}", ""]
            else:
                fence = None
                out.append("")
            continue
        out.append(f"{fence}    {line[len(fence) :]}" if fence is not None else inline(line))
    lines[:] = out


def inline(line):
    """One line's `code` as ``code``; a | outside code escaped."""
    parts = re.split(r"(?<!`)`([^`]+)`(?!`)", line)
    text = []
    for i, part in enumerate(parts):
        if i % 2:
            text.append(f"``{part}``")
        else:
            text.append(part.replace("|", "\\|"))
    return "".join(text)


def setup(app):
    app.connect("builder-inited", check_public_api)
    app.connect("autodoc-process-docstring", markdown_to_rst, priority=100)
