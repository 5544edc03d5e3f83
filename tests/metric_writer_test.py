"""The metrics a run writes: TensorBoard event files (written without TensorFlow) that real
TensorFlow and TensorBoard read back as the same tags, steps and values as metrics.jsonl."""

import json

import numpy as np
import pytest

from bert4rec_jax import metric_writer
from bert4rec_jax import workdir as workdir_lib


def read_events(path):
    """(step, tag, value) of every scalar in an event file, read by TensorFlow, which checks
    every record's CRCs; and the file version its first event names."""
    import tensorflow as tf

    events = list(tf.compat.v1.train.summary_iterator(str(path)))
    scalars = [
        (e.step, v.tag, v.simple_value)
        for e in events
        if e.HasField("summary")
        for v in e.summary.value
    ]
    return scalars, events[0].file_version


def test_crc32c_is_castagnolis():
    # The check value of CRC-32C (RFC 3720's, iSCSI's) and of an empty input.
    assert metric_writer.crc32c(b"123456789") == 0xE3069283
    assert metric_writer.crc32c(b"") == 0


def test_event_files_read_back_through_tensorflow_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = metric_writer.MetricWriter(tmp_path)
    writer.write(5, {"train/loss": 2.5, "train/lr": np.float32(1e-3)})
    writer.write(10, {"train/loss": 1.75, "valid/full/ndcg@10": 0.125})
    writer.close()
    # A resumed run: a second file beside the first; TensorBoard reads the directory as one.
    writer = metric_writer.MetricWriter(tmp_path, start_step=10)
    writer.write(2**40, {"train/loss": float("nan")})  # a large step, a non-finite value
    writer.close()

    first, second = sorted(
        (tmp_path / workdir_lib.TENSORBOARD_DIR).iterdir(), key=lambda p: int(p.name.split(".")[-2])
    )
    assert first.name.startswith("events.out.tfevents.")
    scalars, version = read_events(first)
    assert version == "brain.Event:2"
    assert scalars == [
        (5, "train/loss", 2.5),
        (5, "train/lr", pytest.approx(1e-3, rel=1e-7)),  # float32, as TensorBoard keeps it
        (10, "train/loss", 1.75),
        (10, "valid/full/ndcg@10", 0.125),
    ]
    [(step, tag, value)], _ = read_events(second)
    assert (step, tag, np.isnan(value)) == (2**40, "train/loss", True)

    accumulator = EventAccumulator(str(tmp_path / workdir_lib.TENSORBOARD_DIR))
    accumulator.Reload()
    assert sorted(accumulator.Tags()["scalars"]) == ["train/loss", "train/lr", "valid/full/ndcg@10"]
    assert [(s.step, s.value) for s in accumulator.Scalars("train/loss")][:2] == [
        (5, 2.5),
        (10, 1.75),
    ]


def test_a_trained_workdir_has_the_metrics_of_metrics_jsonl_as_event_files(tiny_stopped_run):
    # The quick loop's trained workdir (conftest): 10 steps, train metrics logged every 5.
    workdir = tiny_stopped_run.workdir
    [events] = (workdir / workdir_lib.TENSORBOARD_DIR).iterdir()
    scalars, _ = read_events(events)
    rows = [
        json.loads(line) for line in (workdir / workdir_lib.METRICS_FILE).read_text().splitlines()
    ]
    expected = [
        (row["step"], tag, pytest.approx(value, rel=1e-6))  # float32 in the event file
        for row in rows
        for tag, value in row.items()
        if tag not in ("step", "time")
    ]
    assert expected and scalars == expected
