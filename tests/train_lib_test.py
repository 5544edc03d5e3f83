"""Tests for bert4rec_jax.train_lib: config checks before anything runs, exact resume, early
stopping across restarts, and real learning on ML-100K."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import device_env, tiny_config, write_timed_log
from helpers import run_cli as _run_cli

from bert4rec_jax import checkpointing, experiment, train_lib
from bert4rec_jax import workdir as workdir_lib
from bert4rec_jax.config import RunConfig
from bert4rec_jax.datasets.corpus import leave_one_out

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "field, value",
    [
        ("batch_size", 12),  # not divisible by the 8 test devices
        ("input.max_predictions", 21),  # > max_len 20
        ("input.mask_prob", 0.0),
        ("input.mask_prob", 1.5),
        ("dataset", "no-such-data"),
        ("model.num_heads", 3),  # does not divide hidden_size 16
        ("model.dtype", "float16"),
        ("split_mode", "random"),
        ("eval.protocols", ("pop100", "pop50")),
        ("eval.metric", "full/ndcg@10"),  # protocol not evaluated
        ("warmup_steps", 20),  # == num_train_steps
    ],
)
def test_bad_config_fails_before_compiling_and_names_the_field(tmp_path, field, value):
    config = tiny_config(tmp_path, **{field: value})
    if field == "eval.metric":
        config.eval.protocols = ("pop100",)
    with pytest.raises(ValueError, match=re.escape(f"{field}=")):
        train_lib.train_and_evaluate(config, str(tmp_path / "work"))
    # Nothing was started: no data prepared, no workdir.
    assert not (tmp_path / "work").exists()


# The device pipeline without buckets resumes, bit for bit, in launch_test's `--until_done`
# test (a training preempted and resumed, equal to the uninterrupted one) and in
# device_input_test's stop-and-resume test; here it comes with buckets.
@pytest.mark.slow
@pytest.mark.parametrize(
    "pipeline, buckets", [("tf.data", ()), ("tf.data", (5, 10)), ("device", (5,))]
)
def test_stopped_and_resumed_run_is_bitwise_identical(tmp_path, pipeline, buckets):
    config = tiny_config(tmp_path, **{"input.pipeline": pipeline, "input.buckets": buckets})
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    results_full = train_lib.train_and_evaluate(config, str(full_dir))
    assert results_full  # a finished run reports test metrics

    assert train_lib.train_and_evaluate(config, str(resumed_dir), stop_at_step=7) == {}
    assert checkpointing.Checkpointer(resumed_dir, keep=3).latest_step() == 7
    results_resumed = train_lib.train_and_evaluate(config, str(resumed_dir))

    full, full_step = checkpointing.restore_params(full_dir, "latest")
    resumed, resumed_step = checkpointing.restore_params(resumed_dir, "latest")
    assert full_step == resumed_step == config.num_train_steps
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert results_resumed == results_full
    # Each training log step appears once: the resumed run went on from 7, not from 0.
    rows = [json.loads(line) for line in open(resumed_dir / "metrics.jsonl")]
    logged = [r["step"] for r in rows if "train/loss" in r]
    assert logged == list(range(5, config.num_train_steps + 1, 5))


def run_cli(module, *args, env=None):
    return _run_cli(module, *args, timeout=900, env=env)  # the ML-100K runs train for minutes


# A real training on MovieLens-100K (offline copy): configs/ml_100k.py's own recipe (1,200 steps,
# about 3.4 CPU-minutes), which leaves the popularity plateau by step 300 on every seed tried
# (benchmarks/seed_convergence.py). A shorter run with its own learning rate and mask rate (500
# steps at 5e-3) sat at the plateau's edge once the recipe moved to Adam beta2 0.98, and failed
# these checks; only what a test needs from the run differs from the recipe here.
ML100K_OVERRIDES = {
    "log_every_steps": 50,
    "checkpoint_every_steps": 0,
    "eval.protocols": "pop100",
}


def ml100k_env():
    """XLA's default flags on one device, not the tests' fast-compiling ones
    (helpers.xla_flags), whose code runs slower: minutes of training here (the two quality tests
    took 480 s with them, 180 s with these). The evaluations of the run get the same flags, so
    that their scores equal the run's own."""
    return device_env(1, fast_compile=False)


@pytest.fixture(scope="module")
def ml100k_run(tmp_path_factory, shared_data):
    """Trains through `python -m bert4rec_jax.train`; returns (config, workdir, test results)."""
    tmp = tmp_path_factory.mktemp("ml100k")
    workdir = tmp / "work"
    overrides = dict(ML100K_OVERRIDES, data_dir=str(tmp / "data"), manual_dir=str(shared_data))
    run_cli(
        "bert4rec_jax.train",
        "--config=configs/ml_100k.py",
        f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in overrides.items()),
        env=ml100k_env(),
    )
    config = workdir_lib.load_config(workdir)
    results = json.loads((workdir / workdir_lib.RESULTS_FILE).read_text())
    return config, workdir, results


@pytest.mark.slow
@pytest.mark.quality
def test_ml100k_training_lowers_loss_and_beats_most_popular(ml100k_run):
    from bert4rec_jax import input_pipeline

    config, workdir, _ = ml100k_run
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    train = [r for r in rows if "train/loss" in r]
    assert train[-1]["train/loss"] < train[0]["train/loss"] - 0.5

    # Accuracy of always predicting the most popular item on the same kind of batches.
    run = RunConfig.from_config_dict(config)
    corpus = experiment.load_data(run.data)
    split = leave_one_out(corpus, config.split_mode)
    top = int(np.argmax(corpus.popularity))
    batches = input_pipeline.train_batches(corpus, split, run.input, config.batch_size)
    hits = weight = 0.0
    for _ in range(20):
        b = next(batches)
        hits += float(((b["labels"] == top) * b["weights"]).sum())
        weight += float(b["weights"].sum())
    popular_accuracy = hits / weight
    assert train[-1]["train/accuracy"] > 2 * popular_accuracy


@pytest.mark.slow
@pytest.mark.quality
def test_ml100k_cli_beats_popularity_baseline(ml100k_run):
    _, workdir, results = ml100k_run
    evaluate = ["bert4rec_jax.evaluate", f"--workdir={workdir}", "--protocol=pop100"]
    printed = run_cli(*evaluate, "--split=test", env=ml100k_env()).stdout
    assert "ndcg@10" in printed
    model = json.loads((workdir / "eval_bert4rec_test.json").read_text())
    run_cli(*evaluate, "--model=popularity", env=ml100k_env())
    popularity = json.loads((workdir / "eval_popularity_test.json").read_text())
    # The CLI restores the parameters the run reported its test results with.
    assert model["step"] == results["step"]
    np.testing.assert_allclose(model["pop100/ndcg@10"], results["pop100/ndcg@10"], atol=1e-6)
    assert model["pop100/ndcg@10"] > 2 * popularity["pop100/ndcg@10"]


def early_stopping_config(tmp_path):
    """Validates every 2 steps and stops after 2 validations without gain, well before 60."""
    return tiny_config(
        tmp_path,
        num_train_steps=60,
        warmup_steps=2,
        learning_rate=3e-2,  # a rate that soon stops helping, so the stop comes early
        checkpoint_every_steps=4,
        **{"eval.every_steps": 2, "eval.early_stopping_patience": 2, "eval.protocols": ("pop100",)},
    )


def validation_scores(workdir, metric="valid/pop100/ndcg@10"):
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return [(r["step"], r[metric]) for r in rows if metric in r]


@pytest.mark.slow
def test_early_stopping_survives_a_restart_and_a_stopped_run_stays_stopped(tmp_path):
    config = early_stopping_config(tmp_path)
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    results = train_lib.train_and_evaluate(config, str(full_dir))
    scores = validation_scores(full_dir)
    stopped_at = scores[-1][0]
    assert stopped_at < config.num_train_steps, "early stopping never triggered"

    # Interrupt the second run right after its first validation without gain (it saves a
    # checkpoint there): a loop that forgot the count would need two more and stop later.
    best, interrupt = -1.0, None
    for step, score in scores:
        if score <= best:
            interrupt = step
            break
        best = max(best, score)
    assert interrupt is not None and interrupt < stopped_at
    assert train_lib.train_and_evaluate(config, str(resumed_dir), stop_at_step=interrupt) == {}
    resumed = train_lib.train_and_evaluate(config, str(resumed_dir))
    assert validation_scores(resumed_dir) == scores
    assert resumed == results
    assert checkpointing.Checkpointer(resumed_dir, keep=3).latest_step() == stopped_at

    # Rerunning the stopped workdir trains nothing and writes the same test results.
    before = (full_dir / "metrics.jsonl").read_text()
    recorded = (full_dir / workdir_lib.RESULTS_FILE).read_text()
    (full_dir / workdir_lib.RESULTS_FILE).unlink()
    assert train_lib.train_and_evaluate(config, str(full_dir)) == results
    assert (full_dir / "metrics.jsonl").read_text() == before
    assert (full_dir / workdir_lib.RESULTS_FILE).read_text() == recorded


@pytest.mark.slow
def test_training_without_tensorflow_from_a_prepared_corpus(tmp_path):
    # The corpus is prepared here (TFDS needs TensorFlow); the training process cannot import
    # TensorFlow at all, as on a lean accelerator image.
    config = tiny_config(tmp_path)
    experiment.load_data(RunConfig.from_config_dict(config).data)
    workdir = tmp_path / "work"
    argv = [
        "train",
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        f"--config.data_dir={config.data_dir}",
        "--config.input.pipeline=device",
    ]
    code = (
        "import runpy, sys\n"
        "sys.modules['tensorflow'] = None  # any import of it now fails\n"
        f"sys.argv = {argv!r}\n"
        "runpy.run_module('bert4rec_jax.train', run_name='__main__', alter_sys=True)\n"
    )
    env = device_env(1)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "device input" in out.stderr
    # TensorBoard's event files too (metric_writer writes them itself; metric_writer_test reads
    # them back through TensorFlow).
    import tensorflow as tf  # here, in the test's process

    [events] = (workdir / workdir_lib.TENSORBOARD_DIR).glob("events.out.tfevents.*")
    tags = {
        v.tag for e in tf.compat.v1.train.summary_iterator(str(events)) for v in e.summary.value
    }
    assert {"train/loss", "valid/pop100/ndcg@10"} <= tags
    results = json.loads((workdir / workdir_lib.RESULTS_FILE).read_text())
    # The best of the validations at steps 10 and 20 was tested.
    assert results["step"] in (10, 20) and results["pop100/ndcg@10"] > 0


def test_a_parsed_config_without_its_source_is_refused_before_anything_is_written(tmp_path):
    # train.py hands the RunConfig down; the workdir's config.json is written from its source.
    run = RunConfig.from_config_dict(tiny_config(tmp_path))
    assert run.source is not None and run == dataclasses.replace(run, source=None)
    with pytest.raises(ValueError, match="no source ConfigDict"):
        train_lib.train_and_evaluate(dataclasses.replace(run, source=None), str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


@pytest.mark.slow  # ~20 s each on 2 cores
@pytest.mark.parametrize(
    "kind, pipeline, buckets", [("bert4rec", "tf.data", ()), ("sasrec", "device", (8, 20))]
)
def test_temporal_split_trains_validates_and_tests_on_a_timed_log(
    tmp_path, kind, pipeline, buckets
):
    log = write_timed_log(tmp_path)
    config = tiny_config(
        tmp_path,
        **{
            "dataset": "file",
            "file.path": str(log),
            "file.user_column": "user",
            "file.item_column": "item",
            "file.timestamp_column": "time",
            "split_mode": "temporal",
            "temporal.valid_start": "q0.7",
            "temporal.test_start": "q0.85",
            "model.kind": kind,
            "input.pipeline": pipeline,
            "input.buckets": buckets,
        },
    )
    results = train_lib.train_and_evaluate(config, str(tmp_path / "work"))
    exp = experiment.Experiment.from_run(RunConfig.from_config_dict(config))
    split = exp.split
    assert split.mode == "temporal" and len(split.users("valid")) != len(split.users("test"))
    assert results["num_users"] == len(split.users("test"))
    assert results["seen/num_users"] + results["unseen_targets"] == results["num_users"]
    assert 0.0 <= results["pop100/ndcg@10"] <= 1.0
    # Checkpoints were chosen on validation, as with leave-one-out.
    assert RunConfig.from_config_dict(config).validates
    lines = (tmp_path / "work" / "metrics.jsonl").read_text().splitlines()
    assert any("valid/pop100/ndcg@10" in line for line in lines)
