"""Training and evaluation of BERT4Rec: `train_and_evaluate(config, workdir)`.

The loop, in order: parse and check the config once (`config.RunConfig`, before anything
compiles), build the experiment (corpus, split, model, evaluator; `experiment.py`), create the
train state already sharded or restore it and the loop's state from the workdir, then step
through the cloze batches, logging, validating and checkpointing when it is time, and finally
evaluate the best parameters on the test split.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from bert4rec_jax import (
    checkpointing,
    cloze,
    device_input,
    evaluation,
    experiment,
    input_pipeline,
    optimizer,
    preemption,
)
from bert4rec_jax import config as config_lib
from bert4rec_jax import sharding as sharding_lib
from bert4rec_jax import train_step as train_step_lib
from bert4rec_jax import workdir as workdir_lib
from bert4rec_jax.checkpointing import LoopState
from bert4rec_jax.evaluation.per_user import UserResults
from bert4rec_jax.metric_writer import MetricWriter


def is_time(step: int, every: int, last_step: int) -> bool:
    """Whether a periodic action is due at `step`: every `every` steps (0 = never), and at the
    last step."""
    return step == last_step or (every > 0 and step % every == 0)


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


def validate(
    evaluator: evaluation.Evaluator,
    params,
    step: int,
    loop: LoopState,
    ckpt: checkpointing.Checkpointer,
    writer: MetricWriter,
    train: config_lib.TrainConfig,
    save_users: Callable[[UserResults], None] | None = None,
) -> LoopState:
    """Scores the parameters on validation, offers them as the best, and updates early stopping.

    `save_users`, when given, is handed the per-user results of each new best (a few bytes a
    user: `valid_users.parquet` then always belongs to the best validated parameters).

    Returns:
      The loop state after this validation.
    """
    users = evaluator.user_results(params, "valid", train.num_valid_users, lists=False)
    results = users.metrics()
    score = results[train.metric]
    writer.write(step, {f"valid/{k}": v for k, v in results.items()})
    ckpt.save_best(step, params, score)
    if loop.best_score is None or score > loop.best_score:
        loop = dataclasses.replace(loop, best_score=score, best_step=step, evals_without_gain=0)
        if save_users is not None:
            save_users(users.with_info(step=step))
    else:
        loop = dataclasses.replace(loop, evals_without_gain=loop.evals_without_gain + 1)
    # One short line: the metric that picks the best step. Every metric is in metrics.jsonl
    # and TensorBoard.
    logging.info(
        "step %d validation: %s %.4f (best %.4f at step %d)",
        step,
        train.metric,
        score,
        loop.best_score,
        loop.best_step,
    )
    patience = train.early_stopping_patience
    if patience > 0 and loop.evals_without_gain >= patience:
        logging.info("Early stopping at step %d: no gain in %d validations", step, patience)
        loop = dataclasses.replace(loop, stopped_early=True)
    return loop


def train_and_evaluate(
    config: config_lib.RunConfig | ml_collections.ConfigDict,
    workdir: str,
    *,
    stop_at_step: int | None = None,
    start_afresh: bool = False,
    test: bool = True,
) -> dict[str, float]:
    """Trains BERT4Rec per `config`, resuming from `workdir` if it holds checkpoints.

    Args:
      config: the run's config, parsed (`config.RunConfig`, as `train.py` passes it) or a
        ConfigDict (see configs/default.py), which is parsed here.
      workdir: where checkpoints, metrics and results go (local, or e.g. gs://).
      stop_at_step: stop (with a checkpoint) once this step is reached, as a preempted job would;
        the schedule still follows config.num_train_steps.
      start_afresh: first move the workdir's checkpoints, best parameters and test results aside
        (`checkpointing.set_aside_run`), and train from step 0.
      test: evaluate the chosen parameters on the test split at the end. False for recipe
        searches, which choose on validation and must not see the test (`benchmarks/search.py`).

    A SIGTERM or SIGINT stops the run at the next safe point (see preemption.py; in a process
    that has not called `preemption.install()`, only during the loop).

    Returns:
      The test metrics of the best (or, without validation, the final) parameters; empty when
      the run stopped before writing them or `test` is False.
    """
    if isinstance(config, config_lib.RunConfig):
        run = config
        if run.source is None:  # built by hand: nothing to record in the workdir's config.json
            raise ValueError(
                "train_and_evaluate: the RunConfig has no source ConfigDict to save as the "
                "workdir's config.json; parse it with RunConfig.from_config_dict"
            )
    else:
        run = config_lib.RunConfig.from_config_dict(config)  # fails naming the first bad field
    train = run.train
    mesh = run.mesh.make_mesh()  # fails naming mesh.data / mesh.model
    run.check(mesh)
    if train.eval_every_steps > 0 and not run.validates:
        logging.warning(
            "eval.every_steps=%d is ignored: split_mode=%r merges the validation item into "
            "training, so there is nothing to validate on; the last parameters are tested",
            train.eval_every_steps,
            run.data.split_mode,
        )
    workdir = workdir_lib.absolute(workdir)

    if start_afresh:
        checkpointing.set_aside_run(workdir)
    workdir_lib.check_compatible(workdir, run)
    preemption.at("data")
    exp = experiment.Experiment.from_run(run)
    logging.info("%s", exp.describe())
    if _stopped_before_training():
        return {}
    checkpointing.set_aside_stale(workdir, run.source)
    workdir_lib.save_config(workdir, run.source)

    tx, schedule = optimizer.from_train_config(train)
    state = train_step_lib.create_train_state(
        exp.model, tx, mesh, max_predictions=run.input.max_predictions, seed=train.seed
    )
    ckpt = checkpointing.Checkpointer(workdir, keep=train.keep_checkpoints)
    loop = LoopState()
    # A checkpoint of another mesh shape has the item rows padded for its own model axis.
    restored = ckpt.restore_latest(state, vocab_size=exp.model.config.vocab_size)
    if restored is not None:
        state, loop = restored
    start, total = int(state.step), train.num_train_steps
    # A preempted run stops where asked; otherwise the end is the last step.
    last = total if stop_at_step is None else min(total, max(stop_at_step, start))
    evaluator = exp.evaluator(mesh)
    if _stopped_before_training():
        ckpt.close()
        return {}
    writer = MetricWriter(workdir, start_step=start)
    # What the per-user files say of the run that made them (beside the data's identity).
    stamp = {"model": run.model.kind, "config_hash": workdir_lib.config_hash(run.source)}

    def save_users(users: UserResults, name: str = workdir_lib.VALID_USERS_FILE):
        if jax.process_index() == 0:
            users.with_info(**stamp).write(workdir / name)

    try:
        if loop.stopped_early or start >= total:
            why = "stopped early" if loop.stopped_early else "reached its last step"
            logging.info("Nothing to train: the run in %s %s at step %d", workdir, why, start)
        else:
            take_step = _step_fn(exp, state, mesh, tx, schedule)
            logging.info(
                "Training steps %d..%d, %d instances per epoch, %s input, %s on %d devices",
                start,
                total,
                cloze.num_instances(exp.corpus, exp.split, run.input),
                run.input.pipeline,
                jax.devices()[0].platform,
                len(jax.devices()),
            )
            progress = _Progress(total, train.batch_size, last_step=start)
            preemption.at("compile")
            sums = None  # metric sums since the last log line, on device
            with preemption.StopRequests() as stop:
                for step in range(start + 1, last + 1):
                    state, metrics = take_step(state)
                    sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
                    if is_time(step, train.log_every_steps, total):
                        _log_train_metrics(writer, step, total, jax.device_get(sums), progress)
                        sums = None
                    if run.validates and is_time(step, train.eval_every_steps, total):
                        loop = validate(
                            evaluator, state.params, step, loop, ckpt, writer, train, save_users
                        )
                    stopping = loop.stopped_early or stop.requested(step)
                    if stopping or is_time(step, train.checkpoint_every_steps, last):
                        if sums is not None:  # never save parameters a non-finite loss produced
                            _check_finite(jax.device_get(sums), step)
                        ckpt.save(step, state, loop)
                    preemption.at("final_save" if step == total else f"step_{step}")
                    if stopping:
                        break
            if int(state.step) < total and not loop.stopped_early:
                why = f"on {stop.signal_name}" if stop.signal_name else "as asked (stop_at_step)"
                logging.info(
                    "Stopping at step %d %s; checkpoint saved, rerun the same command to resume",
                    int(state.step),
                    why,
                )
                return {}
        if signal_name := preemption.stop_now():
            # `finally` below completes the last step's checkpoint before the process exits.
            logging.info(
                "Stopping on %s after step %d's checkpoint; rerun the same command to test the "
                "%s parameters (it trains nothing)",
                signal_name,
                int(state.step),
                "best" if run.validates else "last",
            )
            return {}
        preemption.at("best_restore")
        # The best validated parameters (or the last ones when nothing was validated) go to
        # the test split, laid out like the training parameters.
        params, params_step = state.params, int(state.step)
        if run.validates and ckpt.best_step() is not None:
            params_step = ckpt.best_step()
            params = ckpt.restore_best(state.params, vocab_size=exp.model.config.vocab_size)
    finally:
        ckpt.close()
        writer.close()

    if signal_name := preemption.stop_now():
        logging.info(
            "Stopping on %s before the test evaluation; rerun the same command to test the "
            "parameters of step %d (it trains nothing)",
            signal_name,
            params_step,
        )
        return {}
    if not test:
        logging.info("Not evaluating the test split (asked not to); the run is complete")
        return {}
    preemption.at("test_eval")
    # A stop asked for from here on waits for the evaluation and its results file: stopping
    # would save nothing that a rerun could not redo in the same time.
    users = evaluator.user_results(params, "test")
    results = evaluator.summary(users)
    # The headline table comes last, where a user looks; the others (docs/evaluation_tools.md)
    # are in the log above it and every number is in the results file.
    logging.info("Test results by history length:\n%s", evaluation.format_history_table(results))
    logging.info("Test results beyond accuracy:\n%s", evaluation.format_beyond_table(results))
    logging.info(
        "Test results of the parameters of step %d (%d users):\n%s",
        params_step,
        results.get("num_users", 0),
        evaluation.format_table(evaluation.accuracy_metrics(results)),
    )
    # The per-user file first: results without it are never left behind by a crash.
    save_users(users.with_info(step=params_step), workdir_lib.TEST_USERS_FILE)
    workdir_lib.write_results(
        workdir,
        results,
        params_step=params_step,
        checkpoint_step=int(state.step),
        config=run.source,
    )
    if signal_name := preemption.stop_now():
        logging.info("%s came during the test evaluation; finished it first", signal_name)
    return results


def _stopped_before_training() -> bool:
    """Whether a stop was asked for before the loop began; says so (nothing was trained)."""
    signal_name = preemption.stop_now()
    if signal_name:
        logging.info(
            "Stopping on %s before training began; rerun the same command to start or resume",
            signal_name,
        )
    return bool(signal_name)


def _step_fn(
    exp: experiment.Experiment,
    state: train_step_lib.TrainState,
    mesh: jax.sharding.Mesh,
    tx,
    schedule,
):
    """`take_step(state) -> (state, metrics)`: the jitted train step fed by the configured input.

    "device": the batch of `state.step` is drawn on the devices inside the same program.
    "tf.data": host batches from the state's step on, copied to the devices two steps ahead.
    """
    train_step = train_step_lib.make_train_step(
        exp.model,
        tx,
        schedule,
        exp.config.loss,
        item_counts=exp.corpus.popularity,
        mesh=mesh,
    )
    # Each row's user travels with the batch only when the model reads it.
    with_users = bool(exp.model.config.user_features)
    input_config, batch_size = exp.config.input, exp.config.train.batch_size
    if input_config.pipeline == "device":
        source = device_input.DeviceInput(
            exp.corpus, exp.split, input_config, batch_size, mesh, with_users=with_users
        )
        return source.jit_fused_step(train_step, state)
    jitted = train_step_lib.jit_train_step(train_step, state, mesh)
    host_batches = input_pipeline.train_batches(
        exp.corpus,
        exp.split,
        input_config,
        batch_size,
        start_step=int(state.step),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        with_users=with_users,
    )
    batches = sharding_lib.prefetch_to_device(host_batches, mesh, size=2)
    return lambda state: jitted(state, next(batches))


def _check_finite(sums, step: int) -> float:
    """The mean training loss of `sums`; raises when it is NaN or infinite."""
    loss = float(sums["loss_sum"] / max(sums["weight_sum"], 1.0))
    if not np.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss} by step {step}; stopping")
    return loss


def _log_train_metrics(writer: MetricWriter, step: int, total: int, sums, progress) -> None:
    loss = _check_finite(sums, step)
    seq_per_s, eta = progress.update(step)
    num_steps = float(sums["steps"])
    metrics = {
        "train/loss": loss,
        # Unweighted: the share of predictions right, whatever input.mask_last_weight is.
        "train/accuracy": float(sums["correct_sum"] / max(sums["prediction_count"], 1.0)),
        "train/learning_rate": float(sums["learning_rate"] / num_steps),
        "train/grad_norm": float(sums["grad_norm"] / num_steps),
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
