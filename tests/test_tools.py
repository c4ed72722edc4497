"""The shard builders, run as the command-line tools they are."""

import gzip
import io
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("the builders need TensorFlow", allow_module_level=True)

import tensorflow as tf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tool(name, *args):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result


def read_records(folder, split):
    files = sorted(tf.io.gfile.glob(os.path.join(folder, f"{split}-*")))
    out = []
    for f in files:
        for raw in tf.data.TFRecordDataset(f):
            ex = tf.train.Example.FromString(raw.numpy()).features.feature
            out.append(
                {
                    k: (v.bytes_list.value or v.int64_list.value or v.float_list.value)
                    for k, v in ex.items()
                }
            )
    return files, out


def write_idx(folder, prefix, images, labels):
    """IDX files by hand: magic 0x0803 / 0x0801, big-endian dimensions."""
    header = bytes([0, 0, 8, 3]) + np.array(images.shape, ">u4").tobytes()
    with gzip.open(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), "wb") as f:
        f.write(header + images.tobytes())
    header = bytes([0, 0, 8, 1]) + np.array(labels.shape, ">u4").tobytes()
    with gzip.open(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), "wb") as f:
        f.write(header + labels.astype(np.uint8).tobytes())


def check_fashion_round_trip(idx_dir, out, n):
    from tf_lars.data import fashion_mnist

    result = run_tool(
        "build_fashion_mnist_tfrecords.py",
        f"--output_dir={out}",
        f"--idx_dir={idx_dir}",
        f"--limit={n}",
        "--train_shards=3",
        "--validation_shards=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for split, source in (("train", "train"), ("validation", "test")):
        files, records = read_records(out, split)
        assert len(files) == (3 if split == "train" else 2)
        images, labels = fashion_mnist.load(source, idx_dir)
        assert len(records) == n
        sources = images[:n].astype(np.float32)
        for i, r in enumerate(records):  # written in order, shard after shard
            assert r["image/class/label"][0] == labels[i] + 1  # 1-based, as ImageNet
            decoded = tf.io.decode_jpeg(r["image/encoded"][0]).numpy()[..., 0]
            assert decoded.shape == (28, 28)
            # JPEG (quality 95) is lossy: the image read back must be close to
            # its source and closer to it than to any other image written.
            errors = np.abs(sources - decoded).mean(axis=(1, 2))
            assert errors[i] < 4.0 and errors.argmin() == i
            assert r["image/class/text"][0].decode() == fashion_mnist.CLASS_NAMES[labels[i]]


def test_fashion_mnist_builder_round_trip_on_generated_idx(tmp_path):
    rng = np.random.default_rng(0)
    idx = tmp_path / "idx"
    idx.mkdir()
    for prefix, n in (("train", 40), ("t10k", 30)):
        # Smooth images (JPEG's favourite), random labels.
        base = rng.integers(0, 256, size=(n, 7, 7)).astype(np.uint8)
        images = np.kron(base, np.ones((4, 4), np.uint8))
        write_idx(idx, prefix, images, rng.integers(0, 10, size=n))
    check_fashion_round_trip(str(idx), str(tmp_path / "out"), 30)


def test_fashion_mnist_builder_round_trip_on_real_data(tmp_path, fashion_mnist):
    check_fashion_round_trip(fashion_mnist.find_dir(), str(tmp_path / "out"), 300)


def generated_idx(folder, n_train, n_test, seed=0):
    """Smooth random images (JPEG's favourite); labels cycle through the classes."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        base = rng.integers(0, 256, size=(n, 7, 7)).astype(np.uint8)
        write_idx(
            folder,
            prefix,
            np.kron(base, np.ones((4, 4), np.uint8)),
            (np.arange(n) * 7 + rng.integers(0, 2)) % 10,
        )
    return folder


def test_fashion_mnist_builder_holds_out_a_balanced_part(tmp_path):
    idx = generated_idx(tmp_path / "idx", 100, 20)
    out = tmp_path / "out"
    args = [
        f"--output_dir={out}",
        f"--idx_dir={idx}",
        "--holdout=30",
        "--train_shards=2",
        "--validation_shards=1",
        "--holdout_shards=2",
    ]
    result = run_tool("build_fashion_mnist_tfrecords.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    from tf_lars.data import fashion_mnist

    _, labels = fashion_mnist.load("train", str(idx))
    names = {}
    for split in ("train", "holdout", "validation"):
        names[split] = [
            int(r["image/filename"][0].decode()[:-4]) for r in read_records(out, split)[1]
        ]
    held, kept = names["holdout"], names["train"]
    assert len(held) == 30 and len(kept) == 70 and len(names["validation"]) == 20
    assert sorted(held + kept) == list(range(100))  # disjoint, covering all
    assert np.bincount(labels[held], minlength=10).tolist() == [3] * 10
    with open(out / "build.json") as f:
        info = json.load(f)
    assert info["examples"] == {"train": 70, "validation": 20, "holdout": 30}

    # Another draw into the same folder would mix two splits: refused.
    again = run_tool("build_fashion_mnist_tfrecords.py", *args[:-3], "--holdout_seed=1")
    assert again.returncode != 0
    assert "holdout_seed" in again.stderr and "another --output_dir" in again.stderr
    odd = run_tool(
        "build_fashion_mnist_tfrecords.py",
        f"--output_dir={tmp_path / 'o2'}",
        f"--idx_dir={idx}",
        "--holdout=25",
    )
    assert odd.returncode != 0 and "multiple of the 10 classes" in odd.stderr


def test_fashion_mnist_builder_names_missing_files(tmp_path):
    result = run_tool(
        "build_fashion_mnist_tfrecords.py", f"--output_dir={tmp_path}", f"--idx_dir={tmp_path}"
    )
    assert result.returncode != 0
    assert "Fashion-MNIST not found" in result.stderr and "dataset-fashion-mnist" in result.stderr


def image_bytes(kind, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    mode = "L" if kind == "gray" else "RGB"
    shape = (30, 40) if kind == "gray" else (30, 40, 3)
    image = Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode)
    buffer = io.BytesIO()
    if kind == "png":
        image.save(buffer, "PNG")
    else:
        (image.convert("CMYK") if kind == "cmyk" else image).save(buffer, "JPEG")
    return buffer.getvalue()


BOX_XML = """<annotation><size><width>40</width><height>30</height></size>
<object><name>{synset}</name><bndbox><xmin>4</xmin><ymin>3</ymin>
<xmax>20</xmax><ymax>15</ymax></bndbox></object></annotation>"""


def test_imagenet_builder_writes_the_standard_schema(tmp_path):
    pytest.importorskip("PIL", reason="Pillow writes the CMYK and PNG test images")
    synsets = ["n01", "n02", "n03"]
    kinds = ["jpeg", "png", "cmyk", "gray"]
    train, val, boxes = tmp_path / "train", tmp_path / "val", tmp_path / "boxes"
    for s in synsets:
        (train / s).mkdir(parents=True)
        (boxes / s).mkdir(parents=True)
        for k, kind in enumerate(kinds):
            ext = "png" if kind == "png" else "JPEG"
            (train / s / f"{s}_{k}.{ext}").write_bytes(image_bytes(kind, k))
        (boxes / s / f"{s}_0.xml").write_text(BOX_XML.format(synset=s))
    (train / "n02" / "n02_broken.JPEG").write_bytes(b"\xff\xd8 not really")
    val.mkdir()
    for k in range(3):
        (val / f"val_{k}.JPEG").write_bytes(image_bytes("jpeg", 10 + k))
    (tmp_path / "labels.txt").write_text("n03\nn01\nn02\n")
    (tmp_path / "words.txt").write_text("n01 first thing\nn02 second\nn03 third\n")
    out = tmp_path / "out"
    args = [
        f"--train_dir={train}",
        f"--validation_dir={val}",
        f"--validation_labels={tmp_path / 'labels.txt'}",
        f"--bbox_dir={boxes}",
        f"--synset_words={tmp_path / 'words.txt'}",
        f"--output_dir={out}",
        "--train_shards=2",
        "--validation_shards=1",
        "--processes=2",
    ]
    result = run_tool("build_imagenet_tfrecords.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "n02_broken.JPEG" in result.stderr and "1 unreadable" in result.stderr

    files, records = read_records(out, "train")
    assert [os.path.basename(f) for f in files] == ["train-00000-of-00002", "train-00001-of-00002"]
    assert len(records) == 12
    for r in records:
        synset = r["image/class/synset"][0].decode()
        assert r["image/class/label"][0] == synsets.index(synset) + 1
        assert r["image/format"][0] == b"JPEG" and r["image/channels"][0] == 3
        image = tf.io.decode_jpeg(r["image/encoded"][0])
        assert tf.io.extract_jpeg_shape(r["image/encoded"][0]).numpy().tolist() == [30, 40, 3]
        assert image.shape == (30, 40, 3)
        assert r["image/class/text"][0].decode().startswith(("first", "second", "third"))
        if r["image/filename"][0].decode().endswith("_0.JPEG"):
            np.testing.assert_allclose(
                [r[f"image/object/bbox/{k}"][0] for k in ("xmin", "ymin", "xmax", "ymax")],
                [4 / 40, 3 / 30, 20 / 40, 15 / 30],
                rtol=1e-6,
            )
        else:
            assert "image/object/bbox/xmin" not in r or not r["image/object/bbox/xmin"]
    _, val_records = read_records(out, "validation")
    assert [(r["image/filename"][0], r["image/class/label"][0]) for r in val_records] == [
        (b"val_0.JPEG", 3),
        (b"val_1.JPEG", 1),
        (b"val_2.JPEG", 2),
    ]

    # A second run keeps finished shards; a missing one is written again.
    os.remove(files[1])
    before = os.path.getmtime(files[0])
    again = run_tool("build_imagenet_tfrecords.py", *args)
    assert again.returncode == 0 and os.path.exists(files[1])
    assert os.path.getmtime(files[0]) == before
    assert len(read_records(out, "train")[1]) == 12


def test_imagenet_builder_names_a_missing_folder(tmp_path):
    result = run_tool(
        "build_imagenet_tfrecords.py",
        f"--train_dir={tmp_path / 'nope'}",
        f"--output_dir={tmp_path}",
    )
    assert result.returncode != 0 and "--train_dir" in result.stderr
