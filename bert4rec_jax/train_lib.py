"""Training and evaluation of BERT4Rec: `train_and_evaluate(config, workdir)`.

The loop, in order: validate the config (before anything compiles), load the corpus and split,
build the mesh, create the train state already replicated (or restore it from the workdir), then
step through the cloze batches, logging, validating and checkpointing as configured, and finally
evaluate the best parameters on the test split.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from bert4rec_jax import checkpointing, evaluation, input_pipeline, models, optimizer, steps
from bert4rec_jax import sharding as sharding_lib
from bert4rec_jax.datasets import DATASETS, data_root, load_corpus
from bert4rec_jax.datasets.corpus import SPLIT_MODES, Corpus, leave_one_out
from bert4rec_jax.metric_writer import MetricWriter

RESULTS_FILE = "test_results.json"


def validate_config(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
    """Fails, naming the field, on values that would otherwise fail late or silently.

    Args:
      config: the run's config.
      mesh: the mesh the batches are split over.

    Raises:
      ValueError: on the first bad field.
    """

    def bad(field: str, value: Any, why: str) -> ValueError:
        return ValueError(f"{field}={value!r}: {why}")

    if config.dataset not in DATASETS:
        raise bad("dataset", config.dataset, f"unknown data set; choose one of {DATASETS}")
    if config.split_mode not in SPLIT_MODES:
        raise bad("split_mode", config.split_mode, f"must be one of {SPLIT_MODES}")
    # Every process holds as many devices, so a multiple of the devices splits over processes.
    sharding_lib.check_batch_size("batch_size", config.batch_size, mesh)
    # The model's and the pipeline's own fields are checked where they are read, with the same
    # kind of message; building both configs here runs those checks before any data is loaded.
    models.ModelConfig.from_config(config, vocab_size=3)
    input_pipeline.InputConfig.from_config(config)
    if config.num_train_steps <= 0:
        raise bad("num_train_steps", config.num_train_steps, "must be positive")
    if not 0 <= config.warmup_steps < config.num_train_steps:
        raise bad("warmup_steps", config.warmup_steps, "must be in [0, num_train_steps)")
    if config.learning_rate <= 0:
        raise bad("learning_rate", config.learning_rate, "must be positive")
    e = config.eval
    for p in e.protocols:
        if p not in evaluation.PROTOCOLS:
            raise bad(
                "eval.protocols", tuple(e.protocols), f"{p!r} is not one of {evaluation.PROTOCOLS}"
            )
    if e.every_steps and config.split_mode == "standard":
        protocol, _, name = e.metric.partition("/")
        if protocol not in e.protocols or not name:
            raise bad(
                "eval.metric",
                e.metric,
                f"must be '<protocol>/<metric>' with a protocol in "
                f"eval.protocols={tuple(e.protocols)}",
            )
    sharding_lib.check_batch_size("eval.batch_size", e.batch_size, mesh)
    if any(k <= 0 for k in e.ks):
        raise bad("eval.ks", tuple(e.ks), "cut-offs must be positive")


def load_data(config: ml_collections.ConfigDict) -> Corpus:
    """The run's corpus. With several processes, process 0 prepares it first and the others
    then read its cache, so they never prepare the same files at once."""

    def load() -> Corpus:
        return load_corpus(
            config.dataset,
            data_dir=config.data_dir,
            manual_dir=config.manual_dir,
            synthetic=config.synthetic.to_dict(),
            file=config.get("file"),
        )

    if jax.process_count() == 1:
        return load()
    corpus = load() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("bert4rec_jax: corpus prepared")
    return corpus if corpus is not None else load()


def make_model(config: ml_collections.ConfigDict, corpus: Corpus) -> models.BERT4Rec:
    return models.BERT4Rec(models.ModelConfig.from_config(config, vocab_size=corpus.vocab_size))


def model_fns(model: models.BERT4Rec) -> tuple[Callable, Callable]:
    """The (encode_fn, score_fn) pair the evaluator ranks with."""

    def encode_fn(params, ids, mask_pos):  # [B, N], [B] -> [B, H]
        h = model.apply(
            {"params": params},
            ids,
            mask_pos[:, None],
            train=False,
            method=models.BERT4Rec.predict_hidden,
        )
        return h[:, 0]

    def score_fn(params, h, item_ids):  # [B, H], [C] or [B, C] -> [B, C]
        return model.apply({"params": params}, h, item_ids, method=models.BERT4Rec.item_scores)

    return encode_fn, score_fn


def make_evaluator(
    config: ml_collections.ConfigDict, corpus: Corpus, split, mesh: jax.sharding.Mesh
) -> evaluation.Evaluator:
    """The run's evaluator; sampled candidates are cached beside the data sets."""
    cache_dir = data_root(config.data_dir) / "bert4rec_candidates"
    return evaluation.Evaluator.from_config(corpus, split, config, mesh=mesh, cache_dir=cache_dir)


@dataclasses.dataclass
class _Progress:
    """Throughput and ETA for the console line."""

    total_steps: int
    batch_size: int
    last_time: float = dataclasses.field(default_factory=time.perf_counter)
    last_step: int = 0

    def update(self, step: int) -> tuple[float, float]:
        now = time.perf_counter()
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)  # steps/s
        self.last_time, self.last_step = now, step
        return rate * self.batch_size, (self.total_steps - step) / max(rate, 1e-9)


def _format_eta(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    stop_at_step: int | None = None,
) -> dict[str, float]:
    """Trains BERT4Rec per `config`, resuming from `workdir` if it holds checkpoints.

    Args:
      config: the run's config (see configs/default.py).
      workdir: where checkpoints, metrics and results go.
      stop_at_step: stop (with a checkpoint) once this step is reached, as a preempted job would;
        the schedule still follows config.num_train_steps.

    Returns:
      The test metrics of the best (or, without validation, the final) parameters; empty when
      the run stopped before num_train_steps.
    """
    mesh = sharding_lib.make_mesh()
    validate_config(config, mesh)
    input_config = input_pipeline.InputConfig.from_config(config)
    workdir = str(pathlib.Path(workdir).absolute())

    corpus = load_data(config)
    split = leave_one_out(corpus, config.split_mode)
    logging.info(
        "Data set %s: %d users, %d items, %d interactions, %d evaluated users (%s split)",
        corpus.name,
        corpus.num_users,
        corpus.num_items,
        corpus.num_interactions,
        len(split.eval_users),
        split.mode,
    )
    checkpointing.save_config(workdir, config)

    model = make_model(config, corpus)
    tx, schedule = optimizer.from_config(config)
    state = steps.create_train_state(
        model, tx, mesh, max_predictions=config.input.max_predictions, seed=config.seed
    )
    ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)
    restored = ckpt.restore_latest(state)
    if restored is not None:
        state = restored
    start_step = int(state.step)
    total = config.num_train_steps

    train_step = steps.jit_train_step(steps.make_train_step(model, tx, schedule), state, mesh)
    validate = config.eval.every_steps > 0 and config.split_mode == "standard"
    evaluator = make_evaluator(config, corpus, split, mesh)
    encode_fn, score_fn = model_fns(model)
    writer = MetricWriter(workdir)

    batches = input_pipeline.train_batches(
        corpus,
        split,
        input_config,
        config.batch_size,
        start_step=start_step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    logging.info(
        "Training steps %d..%d, %d instances per epoch, %s on %d devices",
        start_step,
        total,
        input_pipeline.num_instances(corpus, split, input_config),
        jax.devices()[0].platform,
        len(jax.devices()),
    )
    progress = _Progress(total, config.batch_size, last_step=start_step)
    sums = None
    evals_without_gain, best_score = 0, -math.inf
    step = start_step
    try:
        while step < total:
            batch = sharding_lib.global_batch(mesh, next(batches))
            state, metrics = train_step(state, batch)
            sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
            step += 1
            if step % config.log_every_steps == 0 or step == total:
                _log_train_metrics(writer, step, total, jax.device_get(sums), progress)
                sums = None
            stop_early = False
            if validate and step % config.eval.every_steps == 0:
                results = evaluator.evaluate(
                    state.params, encode_fn, score_fn, "valid", config.eval.num_valid_users
                )
                score = results[config.eval.metric]
                writer.write(step, {f"valid/{k}": v for k, v in results.items()})
                logging.info("step %d validation: %s", step, _short(results))
                ckpt.save_best(step, state.params, score)
                if score > best_score:
                    best_score, evals_without_gain = score, 0
                else:
                    evals_without_gain += 1
                patience = config.eval.early_stopping_patience
                stop_early = patience > 0 and evals_without_gain >= patience
                if stop_early:
                    logging.info(
                        "Early stopping at step %d: no gain in %d evaluations", step, patience
                    )
            every = config.checkpoint_every_steps
            preempted = stop_at_step is not None and step >= stop_at_step
            if step == total or stop_early or preempted or (every and step % every == 0):
                ckpt.save(step, state)
            if stop_early:
                break
            if preempted:
                logging.info("Stopping at step %d as asked (stop_at_step)", step)
                return {}
        # The best validated parameters (or the last ones when nothing was validated) go to
        # the test split, laid out like the training parameters.
        params, params_step = state.params, step
        if validate and ckpt.best_step() is not None:
            params_step = ckpt.best_step()
            params = ckpt.restore_best(state.params)
    finally:
        ckpt.close()
        writer.close()

    results = evaluator.evaluate(params, encode_fn, score_fn, "test", 0)
    logging.info(
        "Test results of the parameters of step %d:\n%s",
        params_step,
        evaluation.format_table(results),
    )
    if jax.process_index() == 0:
        record = {"step": params_step, **{k: float(v) for k, v in results.items()}}
        (pathlib.Path(workdir) / RESULTS_FILE).write_text(json.dumps(record, indent=2))
    return results


def _log_train_metrics(writer: MetricWriter, step: int, total: int, sums, progress) -> None:
    loss = float(sums["loss_sum"] / max(sums["weight_sum"], 1.0))
    if not np.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss} by step {step}; stopping")
    seq_per_s, eta = progress.update(step)
    steps = float(sums["steps"])
    metrics = {
        "train/loss": loss,
        "train/accuracy": float(sums["correct_sum"] / max(sums["weight_sum"], 1.0)),
        "train/learning_rate": float(sums["learning_rate"] / steps),
        "train/grad_norm": float(sums["grad_norm"] / steps),
        "train/sequences_per_second": seq_per_s,
    }
    writer.write(step, metrics)
    logging.info(
        "step %d/%d | loss %.4f | acc %.4f | lr %.2e | grad norm %.3f | %.0f seq/s | ETA %s",
        step,
        total,
        metrics["train/loss"],
        metrics["train/accuracy"],
        metrics["train/learning_rate"],
        metrics["train/grad_norm"],
        seq_per_s,
        _format_eta(eta),
    )


def _short(results: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in results.items() if k != "num_users")
