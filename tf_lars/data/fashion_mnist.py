"""Fashion-MNIST from its four gzipped IDX files (the embedded default data).

Debian's `dataset-fashion-mnist` installs them under
`/usr/share/datasets/fashion-mnist`; any folder holding the same four files
works too (`TF_LARS_FASHION_MNIST` or an explicit `data_dir`).
"""

import gzip
import os
from typing import Any

import numpy as np

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "TF_LARS_FASHION_MNIST"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
HOW_TO_GET = (
    "install Debian's package (apt-get install dataset-fashion-mnist), or "
    "put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in a folder "
    f"and pass it (or set {ENV_VAR})"
)
_DTYPES: dict[int, Any] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path):
    """Reads one IDX file (gzipped or not) into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4).astype(int)
    dtype = np.dtype(_DTYPES[data[2]])
    expected = 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{path}: truncated or padded IDX file ({len(data)} bytes, expected {expected})"
        )
    return np.frombuffer(data, dtype, offset=4 + 4 * ndim).reshape(dims)


def find_dir(data_dir=None):
    """The folder holding the four files, or None when there is none.

    Args:
        data_dir: a folder to look in first; then `$TF_LARS_FASHION_MNIST`,
            then Debian's `dataset-fashion-mnist` folder.
    """
    candidates = [data_dir] if data_dir else [os.environ.get(ENV_VAR), DEBIAN_DIR]
    for folder in candidates:
        if folder and all(
            os.path.exists(os.path.join(folder, f)) for pair in FILES.values() for f in pair
        ):
            return folder
    return None


def load(split, data_dir=None):
    """Returns `(images uint8 [n, 28, 28], labels int64 [n])` of a split.

    Args:
        split: "train" or "validation" (the 10,000 test images).
        data_dir: the folder of the IDX files (default: see `find_dir`).
    """
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test'. Received: {split!r}")
    folder = find_dir(data_dir)
    if folder is None:
        where = data_dir or f"{DEBIAN_DIR} or ${ENV_VAR}"
        raise FileNotFoundError(f"Fashion-MNIST not found in {where}: {HOW_TO_GET}.")
    images_file, labels_file = (os.path.join(folder, f) for f in FILES[split])
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_file} has {images.shape[0]} images but {labels_file} "
            f"has {labels.shape[0]} labels"
        )
    return images, labels.astype(np.int64)


def split_holdout(labels, holdout, seed=0):
    """Indices `(kept, held_out)` of a class-balanced random held-out part.

    `holdout / 10` images of each class are drawn without replacement; both
    index lists are sorted, so the kept images stay in their file order.

    Args:
        labels: the split's labels.
        holdout: images to hold out, a multiple of 10.
        seed: the draw's seed. Defaults to 0.
    """
    classes = np.unique(labels)
    if holdout % len(classes):
        raise ValueError(
            f"holdout={holdout} must be a multiple of the "
            f"{len(classes)} classes (the same number of each)"
        )
    per_class = holdout // len(classes)
    rng = np.random.default_rng(seed)
    held = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if per_class > len(members):
            raise ValueError(
                f"holdout={holdout} needs {per_class} images of each "
                f"class; class {c} has {len(members)}"
            )
        held.append(rng.choice(members, per_class, replace=False))
    held_sorted = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), held_sorted), held_sorted


__all__ = ["load", "find_dir", "split_holdout"]
