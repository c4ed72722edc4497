"""Faults and bad input: what is skipped, what stops, and the one line that says so."""

import io
import json
import os
import re
import signal
import threading
import time

import keras
import numpy as np
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("tf.data pipelines and the trainer need TensorFlow", allow_module_level=True)

import helpers  # noqa: E402
import tensorflow as tf  # noqa: E402
from test_data import COMMON, example, jpeg, read_all, write_damaged, write_shards  # noqa: E402
from test_training import TINY, epochs_logged, last_line, train, wait_for_step, weights_of  # noqa: E402

from tf_lars.data import pipeline  # noqa: E402

IMAGES = [
    "--data_format=imagenet",
    "--model=resnet8",
    "--image_size=32",
    "--num_classes=10",
    "--batch_size=8",
    "--learning_rate=0.1",
    "--epochs=1",
    "--eval_every_epochs=0",
    "--verbose=0",
    "--shuffle_buffer=16",
]


# 1. A split with no usable record.


def test_a_split_without_usable_records_fails_in_seconds_naming_counts(tmp_path):
    # Stored labels 0 under ImageNet's offset 1: every label is -1.
    write_shards(tmp_path, shards=2, per_shard=5, label_of=lambda s, k: 0)
    bad = pipeline.BadRecords()
    ds = helpers.dataset(
        str(tmp_path),
        "train",
        training=True,
        global_batch_size=4,
        bad_records=bad,
        max_unusable=200,
        **COMMON,
    )
    errors = []

    def first_batch():  # In a thread: a pipeline that spins must not hang the suite.
        try:
            next(iter(ds))
        except tf.errors.InvalidArgumentError as e:
            errors.append(e)

    reader = threading.Thread(target=first_batch, daemon=True)
    reader.start()
    reader.join(timeout=60)
    assert not reader.is_alive(), "the pipeline spins without yielding or failing"
    line = pipeline.explain(errors[0], str(tmp_path), 10, 1, bad)
    assert line.startswith(f"split 'train' of {tmp_path} has no usable record in the first ")
    assert "records with labels out of range (last in train-0000" in line
    assert "last label stored: 0" in line and "--label_offset=1" in line
    assert bad.result("train")["bad_labels"] >= 200 and bad.result("train")["bad_images"] == 0


def test_a_few_usable_records_among_many_bad_ones_still_train(tmp_path):
    # One good record in 30, within the first `max_unusable` read: the
    # pipeline yields it pass after pass, hundreds of bad records later.
    write_shards(
        tmp_path, shards=3, per_shard=10, label_of=lambda s, k: 3 if (s, k) == (2, 9) else 99
    )
    ds = helpers.dataset(
        str(tmp_path), "train", training=True, global_batch_size=4, max_unusable=31, **COMMON
    )
    _, labels = next(iter(ds))
    assert labels.numpy().tolist() == [2, 2, 2, 2]


def test_trainer_ends_an_all_bad_split_with_one_line(tmp_path):
    data = tmp_path / "data"
    write_shards(data, shards=2, per_shard=4, label_of=lambda s, k: -1)
    write_shards(data, split="validation", shards=1, per_shard=4)
    start = time.time()
    result = train(
        *IMAGES,
        f"--data_dir={data}",
        f"--model_dir={tmp_path / 'run'}",
        "--train_examples=64",
        "--eval_examples=4",
        timeout=240,
    )
    seconds = time.time() - start
    assert result.returncode == 1
    line = last_line(result)
    assert line.startswith(
        f"tf-lars-train: error: split 'train' of {data} has no usable "
        "record in the first 1000 read ("
    ), result.stderr[-3000:]
    assert "last label stored: -1" in line and "labels must lie in 1..10" in line
    assert seconds < 120, seconds


# 2. Good JPEGs are kept, whatever follows their end marker.


def _pil_jpeg(mode, **save):
    from PIL import Image

    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).convert(mode)
    out = io.BytesIO()
    image.save(out, format="JPEG", **save)
    return out.getvalue()


def test_jpegs_that_tensorflow_decodes_are_never_dropped(tmp_path):
    base = jpeg(5)
    rng = np.random.default_rng(0)
    # Trailers of 0 bytes to 64 KB; random bytes hold stray markers too.
    kept = [
        base + rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        for n in (0, 1, 2, 31, 32, 33, 100, 4096, 65536)
    ]
    kept += [base + b"\xff\xd8" + b"\0" * 64]  # a trailer that starts like a JPEG
    kept += [_pil_jpeg("RGB", progressive=True), _pil_jpeg("L"), _pil_jpeg("CMYK")]
    for data in kept:  # TensorFlow decodes each whole.
        assert tf.io.decode_jpeg(data, channels=3).shape[2] == 3
    dropped = [base[: len(base) // 2], base[:-2], b"GIF89a" + base[6:], b""]
    with tf.io.TFRecordWriter(str(tmp_path / "validation-00000-of-00001")) as w:
        for k, data in enumerate(kept + dropped):
            w.write(example(data, k % 10 + 1))
    bad = pipeline.BadRecords()
    _, labels = read_all(
        helpers.dataset(
            str(tmp_path),
            "validation",
            training=False,
            global_batch_size=1,
            bad_records=bad,
            **COMMON,
        )
    )
    assert labels.tolist() == [k % 10 for k in range(len(kept))]
    assert bad.result() == {"damaged_shards": 0, "bad_images": len(dropped), "bad_labels": 0}


# 3. Skipped input on the console; 4. --strict_data in one line.


def test_skipped_records_are_said_on_the_console_and_in_the_final_line(tmp_path):
    data = tmp_path / "data"
    write_shards(data, shards=2, per_shard=8)
    write_damaged(data / "v")
    for name in os.listdir(data / "v"):  # damaged shards as the validation split
        os.rename(data / "v" / name, data / name.replace("train", "validation"))
    result = train(
        *IMAGES,
        f"--data_dir={data}",
        f"--model_dir={tmp_path / 'run'}",
        "--train_examples=16",
        "--eval_examples=4",
        "--eval_batch_size=4",
        "--eval_every_epochs=1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # What the evaluation read and dropped: at least one pass over the split
    # (the repeating pipeline reads ahead), each kind with its last shard.
    # Counts of one read in the singular ("1 record with a label out of range").
    said = re.search(
        r"tf-lars-train: evaluation skipped in validation: (\d+) damaged "
        r"shards?, (\d+) records? without a whole JPEG, (\d+) records? with "
        r"(?:a )?labels? out of range \((.*)\)\n",
        result.stdout,
    )
    assert said, result.stdout
    assert [int(n) >= least for n, least in zip(said.groups()[:3], (1, 2, 1))] == [True] * 3
    assert re.match(
        r"\d+ damaged shards? \(last in validation-00001-of-00002\); \d+ "
        r"records without a whole JPEG \(last in validation-00000-of-00002\)",
        said.group(4),
    ), said.group(4)
    final = result.stdout.strip().splitlines()[-1]
    assert re.search(
        r"on 4 validation images \(\d+ damaged shards?, \d+ records? without a "
        r"whole JPEG, \d+ records? with (?:a )?labels? out of range skipped\);",
        final,
    ), final
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_by_split"]["train"] == {
        "damaged_shards": 0,
        "bad_images": 0,
        "bad_labels": 0,
    }
    assert summary["skipped_by_split"]["validation"]["bad_labels"] >= 1


@pytest.mark.parametrize("damage", ["label", "shard"])
def test_strict_data_ends_with_one_line_naming_the_shard(tmp_path, damage):
    data = tmp_path / "data"
    truncated = write_damaged(data)
    if damage == "shard":
        os.remove(data / "train-00000-of-00002")
    else:  # Shard 0 holds only its record labelled 11.
        os.remove(truncated)
        with tf.io.TFRecordWriter(str(data / "train-00000-of-00002")) as w:
            w.write(example(jpeg(1), 11))
    write_shards(data, split="validation", shards=1, per_shard=4)
    result = train(
        *IMAGES,
        f"--data_dir={data}",
        f"--model_dir={tmp_path / 'run'}",
        "--train_examples=16",
        "--eval_examples=4",
        "--strict_data",
    )
    assert result.returncode == 1
    line = last_line(result)
    if damage == "shard":
        assert line == (
            f"tf-lars-train: error: --strict_data: shard {truncated} is truncated "
            "or corrupt: re-create it, or run without --strict_data to keep the "
            "records before the damage"
        )
    else:
        assert line == (
            f"tf-lars-train: error: --strict_data: a record of shard "
            f"{data / 'train-00000-of-00002'} stores label 11, outside 1..10 "
            "(--num_classes=10, --label_offset=1): check those two flags, or run "
            "without --strict_data to skip such records"
        )
    assert "Traceback" not in result.stderr


# 7. SIGTERM: back up at the current step, resume there.


def test_a_backup_at_an_epochs_last_batch_resumes_in_the_next_epoch(tmp_path):
    from tf_lars.training import checkpoints

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.ones((8, 2)), np.ones((8, 1)), batch_size=2, verbose=0)  # 4 steps
    backup = checkpoints.BackupAndRestore(str(tmp_path), steps_per_epoch=4)
    backup.set_model(model)
    backup.save(0, 4)  # all 4 batches of epoch 0 trained
    assert checkpoints.read_backup(str(tmp_path)) == {"epoch": 1, "batch": 0, "step": 4}
    backup.save(1, 3)
    assert checkpoints.read_backup(str(tmp_path)) == {"epoch": 1, "batch": 3, "step": 4}
    backup.final = True  # stopped: Keras's own epoch end must not replace it
    backup.on_epoch_end(1)
    assert checkpoints.read_backup(str(tmp_path))["batch"] == 3


def test_a_resumed_epoch_counts_the_batches_trained_before_it(tmp_path):
    # Epochs of 4 batches; the run resumes with 2 of epoch 0 done and must
    # stop after step 3 of the run (its total): one batch of this fit. The
    # backup made after that batch says batch 3 of epoch 0.
    from tf_lars.training import checkpoints
    from tf_lars.training.position import Position, StopAtStep

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    position = Position()
    position.resume_inside(2)
    backup = checkpoints.BackupAndRestore(
        str(tmp_path), every_steps=1, steps_per_epoch=4, position=position
    )
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            saved = checkpoints.read_backup(str(tmp_path))
            seen.append({k: saved[k] for k in ("epoch", "batch", "step")})

    model.fit(
        np.ones((16, 2)),
        np.ones((16, 1)),
        batch_size=2,
        epochs=1,
        steps_per_epoch=2,
        verbose=0,
        callbacks=[position, backup, StopAtStep(3, 4, position), Record()],
    )
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 1
    assert seen == [{"epoch": 0, "batch": 3, "step": 1}]


def test_a_seeded_stream_resumed_with_skip_goes_on_where_it_stopped(tmp_path):
    write_shards(tmp_path, shards=2, per_shard=12)
    make = lambda skip: helpers.dataset(  # noqa: E731
        str(tmp_path),
        "train",
        training=True,
        global_batch_size=4,
        seed=5,
        skip=skip,
        shuffle_buffer=8,
        **COMMON,
    )
    whole = [(x.numpy(), y.numpy()) for x, y in make(0).take(9)]
    rest = [(x.numpy(), y.numpy()) for x, y in make(12).take(6)]
    for (xa, ya), (xb, yb) in zip(whole[3:], rest):  # 12 records = 3 batches of 4
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)  # the same crops and flips too


def _train_until_sigterm(args, backup, at_step):
    """Starts the trainer and sends SIGTERM once its backup reached `at_step`."""
    process = helpers.start_trainer(*args)
    try:
        wait_for_step(backup.parent, [process], at_step, timeout=240)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    return process.returncode, out, err


@pytest.mark.heavy
def test_sigterm_twice_ends_like_an_uninterrupted_run(tmp_path):
    # 3 epochs of 30 steps; backups every 2 steps show where the run is. Epochs
    # this long leave room for the steps a fast run takes between the backup
    # the test sees and the signal's arrival, so the stops land inside epochs.
    args = [
        *TINY,
        "--train_examples=480",
        "--epochs=3",
        "--eval_every_epochs=0",
        "--deterministic",
        "--backup_every_steps=2",
    ]
    whole = train(*args, f"--model_dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    run = tmp_path / "run"
    stops = []
    for at_step in (3, 45):  # early in epoch 1, then in the middle of epoch 2
        code, out, err = _train_until_sigterm(
            [*args, f"--model_dir={run}"], run / "backup", at_step
        )
        assert code == 75, err[-3000:]
        line = out.strip().splitlines()[-1]
        assert line.startswith("tf-lars-train: stopped by SIGTERM at step ")
        assert line.endswith(
            f"backed up in {run / 'backup'}: run the same command to resume there"
        )
        saved = helpers.backup_metadata(run)
        # Nothing trained is lost: the backup holds the step it stopped at.
        assert saved["step"] == int(line.split("at step ")[1].split(";")[0])
        stops.append(saved)
    assert any(s["batch"] for s in stops), stops  # at least one stop inside an epoch
    resumed = train(*args, f"--model_dir={run}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert (
        summary["steps"]
        == json.loads((tmp_path / "whole" / "summary.json").read_text())["steps"]
        == 90
    ), (stops, resumed.stdout, resumed.stderr[-2000:])
    for a, b in zip(
        weights_of(run / "model.keras"), weights_of(tmp_path / "whole" / "model.keras")
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # One row an epoch in its table, as the uninterrupted run's (a stop inside
    # an epoch logs the part before it; the resumed run drops that row).
    assert epochs_logged(run) == epochs_logged(tmp_path / "whole") == [0, 1, 2]


def test_resuming_keeps_the_table_rows_of_the_epochs_backed_up(tmp_path):
    from tf_lars.training import checkpoints

    table = tmp_path / "history.csv"
    rows = "epoch,accuracy,loss\n0,0.5,1.0\n1,0.6,0.9\n2,0.65,0.8\n2,0.7,0.7\n"
    table.write_text(rows)
    backup = tmp_path / "backup"
    backup.mkdir()
    # Backed up inside epoch 2 (1 batch of it trained): its rows go.
    (backup / "training_metadata.json").write_text('{"epoch": 2, "batch": 1, "step": 9}')
    checkpoints.keep_backed_up_epochs(str(table), str(backup), 4)
    assert table.read_text() == "epoch,accuracy,loss\n0,0.5,1.0\n1,0.6,0.9\n"
    # A finished run's backup (after its last epoch): the table stays as it is.
    (backup / "training_metadata.json").write_text('{"epoch": 2, "batch": 0, "step": 8}')
    before = os.stat(table).st_mtime_ns
    checkpoints.keep_backed_up_epochs(str(table), str(backup), 4)
    assert table.read_text().count("\n") == 3 and os.stat(table).st_mtime_ns == before
    # Older versions' backup after an epoch's last batch (4 of 4): the next epoch.
    (backup / "training_metadata.json").write_text('{"epoch": 1, "batch": 4}')
    checkpoints.keep_backed_up_epochs(str(table), str(backup), 4)
    assert table.read_text() == "epoch,accuracy,loss\n0,0.5,1.0\n1,0.6,0.9\n"
    # No backup: a run that starts again from the beginning keeps only the header.
    checkpoints.keep_backed_up_epochs(str(table), str(tmp_path / "none"), 4)
    assert table.read_text() == "epoch,accuracy,loss\n"
    checkpoints.keep_backed_up_epochs(str(tmp_path / "absent.csv"), str(backup), 4)  # no table


# 5. The layouts people have.


def test_imagenet_to_gcs_subfolders_are_found_and_empty_shards_ignored(tmp_path):
    write_shards(tmp_path / "train", shards=2, per_shard=3)
    write_shards(tmp_path / "validation", split="validation", shards=1, per_shard=3)
    (tmp_path / "train" / "train-00002-of-00004").write_bytes(b"")  # empty, as on small sets
    files = pipeline.list_files(str(tmp_path), "train")
    assert [os.path.basename(f) for f in files] == ["train-00000-of-00002", "train-00001-of-00002"]
    _, labels = read_all(
        helpers.dataset(str(tmp_path), "validation", training=False, global_batch_size=3, **COMMON)
    )
    assert sorted(labels) == [0, 0, 0]
    with pytest.raises(FileNotFoundError, match="nor test/test-\\*-of-\\* below it"):
        pipeline.list_files(str(tmp_path), "test")


def write_tfds(root, version, train=(5, 3), validation=(4,), info=True, fmt="tfrecord"):
    """TFDS 4.9's layout: ROOT/imagenet2012/VERSION/ shards and dataset_info.json."""
    folder = root / "imagenet2012" / version
    folder.mkdir(parents=True)
    for split, lengths in (("train", train), ("validation", validation)):
        for s, n in enumerate(lengths):
            name = f"imagenet2012-{split}.{fmt}-{s:05d}-of-{len(lengths):05d}"
            with tf.io.TFRecordWriter(str(folder / name)) as w:
                for k in range(n):
                    w.write(example(jpeg(10 * s + k), k % 4, fmt="tfds"))
    if info:
        splits = [
            {
                "name": split,
                "numBytes": "1",
                "shardLengths": [str(n) for n in lengths],
                "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
            }
            for split, lengths in (("train", train), ("validation", validation))
        ]
        (folder / "dataset_info.json").write_text(
            json.dumps({"name": "imagenet2012", "version": version, "splits": splits})
        )
    return folder


def test_tfds_root_newest_version_and_split_sizes_from_dataset_info(tmp_path):
    from tf_lars.data import tfds
    from tf_lars.training import inputs

    write_tfds(tmp_path, "5.0.0", train=(2,))
    newest = write_tfds(tmp_path, "5.1.0")
    for given in (tmp_path, tmp_path / "imagenet2012", newest):
        folder, sizes, _ = tfds.resolve(str(given))
        assert folder == str(newest) and sizes == {"train": 8, "validation": 4}
    note = tfds.resolve(str(tmp_path))[2]
    assert "reading version 5.1.0" in note and "also there: 5.0.0" in note
    data = inputs.spec("tfds", str(tmp_path), num_classes=4)
    assert (data.data_dir, data.train_examples, data.eval_examples) == (str(newest), 8, 4)
    # Given sizes still win over dataset_info.json's.
    assert inputs.spec("tfds", str(tmp_path), train_examples=6).train_examples == 6
    with pytest.raises(FileNotFoundError, match="use --data_format=tfds"):
        pipeline.list_files(str(newest), "train", "imagenet")


def test_tfds_array_record_shards_get_one_line(tmp_path):
    from tf_lars.data import tfds

    folder = write_tfds(tmp_path, "5.1.0", fmt="array_record")
    with pytest.raises(
        FileNotFoundError,
        match="array_record shards, which tf.data cannot "
        "read: prepare the data set again as TFRecord",
    ):
        tfds.resolve(str(tmp_path))
    assert os.listdir(folder)


def test_trainer_reads_a_tfds_root_and_warns_of_a_wrong_size_elsewhere(tmp_path):
    root = tmp_path / "tfds"
    write_tfds(root, "5.1.0", train=(10, 6))
    tfds_run = train(
        *IMAGES,
        "--data_format=tfds",
        "--num_classes=4",
        f"--data_dir={root}",
        f"--model_dir={tmp_path / 'a'}",
        "--batch_size=4",
    )
    assert tfds_run.returncode == 0, tfds_run.stderr[-3000:]
    derived = json.loads((tmp_path / "a" / "flags.json").read_text())["derived"]
    assert derived["steps_per_epoch"] == 16 // 4  # from dataset_info.json's 10 + 6
    assert "tf-lars-train: warning" not in tfds_run.stderr
    # ImageNet-schema shards of a small set, ImageNet's default size: warned.
    plain = tmp_path / "plain"
    write_shards(plain / "train", shards=2, per_shard=20)
    write_shards(plain / "validation", split="validation", shards=1, per_shard=4)
    small = train(
        *IMAGES,
        f"--data_dir={plain}",
        f"--model_dir={tmp_path / 'b'}",
        "--train_steps=1",
        "--eval_examples=4",
    )
    assert small.returncode == 0, small.stderr[-3000:]
    assert (
        "tf-lars-train: warning: --train_examples=1281167 (the imagenet default), but the "
        "train shards hold about 40 records (estimated from their size)"
    ) in small.stderr
