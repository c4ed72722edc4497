"""tf_lars: LARS and the large-batch recipe for Keras 3 and TensorFlow."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"',
                    (HERE / "tf_lars" / "__init__.py").read_text()).group(1)

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
        "test": ["pytest>=7", "pillow"],
        "jax": ["jax>=0.4.30"],
        # tools/large_batch_study.py draws its plots with it.
        "study": ["matplotlib>=3.6"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
