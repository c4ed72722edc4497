"""tf_lars: LARS and the large-batch recipe for Keras 3 and TensorFlow."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "tf_lars" / "__init__.py").read_text()
).group(1)

setup(
    name="tf_lars",
    version=VERSION,
    description="LARS, warmup schedules, input pipelines and a trainer for "
    "large-batch training with Keras 3 and tf.distribute.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["tf_lars", "tf_lars.*"]) + ["tf_lars.flagfiles"],
    # The experiments' flagfiles (flags/*.cfg) install as tf_lars.flagfiles,
    # so `tf-lars-train --flagfile=NAME` finds them by short name.
    package_dir={"tf_lars.flagfiles": "flags"},
    package_data={"tf_lars.flagfiles": ["*.cfg"]},
    entry_points={"console_scripts": ["tf-lars-train = tf_lars.train:run"]},
    # Tested in CI: the floors below together (Python 3.9, Keras 3.10.0,
    # TensorFlow 2.16.2, JAX 0.4.30: tools/setup_oldest.sh and
    # tests/test_versions.py), and Python 3.11 with Keras 3.15, TensorFlow
    # 2.21, JAX 0.10 and torch 2.13 (tools/setup_env.sh).
    # TensorFlow is an extra, not a hard requirement: its GPU build
    # (`tensorflow`) and CPU build (`tensorflow-cpu`) are different
    # distributions, and requiring either would pull it in on top of the
    # other. The optimizer and schedules need only Keras (any backend).
    install_requires=[
        "keras>=3.10",
        "absl-py>=1.0",
        "tensorboard>=2.16",
        "numpy>=1.23",
    ],
    extras_require={
        "tensorflow": ["tensorflow>=2.16"],
        "tensorflow-cpu": ["tensorflow-cpu>=2.16"],
        "test": ["pytest>=7", "pytest-xdist>=3", "pillow"],
        "jax": ["jax>=0.4.30"],
        "torch": ["torch>=2.13"],
        # The house rules, checked in CI (tools/test.sh): ruff.toml, mypy.ini.
        "lint": ["ruff==0.17.6", "mypy==2.4.1"],
        # tools/large_batch_study.py draws its plots with it.
        "study": ["matplotlib>=3.6"],
        # The documentation site (docs/conf.py), built in CI with warnings as errors.
        "docs": ["sphinx==8.2.3", "myst-parser==5.2.0", "furo==2025.12.19"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
