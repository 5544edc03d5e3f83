"""Orbax checkpoints of a training run: the latest K states for resuming, the best parameters.

Each checkpoint in `checkpoints/` holds two items: `state` (step, params, optimizer state, rng) and
`loop` (the loop's own state: best score and step, validations without gain, whether it stopped
early; JSON). `best/` holds the parameters that scored best on validation, with their metrics.
The workdir's layout is `workdir.py`'s. The data position is not stored: the input pipeline
derives it from the step alone.

A checkpoint restores on any mesh shape. On a mesh whose `model` axis splits the item table, the
item rows (item_embedding, output_bias and their Adam moments) are padded with zeros to a multiple
of the axis (`sharding.padded_vocab_size`); restoring onto another shape pads or cuts those rows
to the target's count (Orbax's non-strict restore), which changes padding only.
"""

from __future__ import annotations

import dataclasses
import re
import time
import uuid
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from bert4rec_jax import sharding as sharding_lib
from bert4rec_jax import workdir as workdir_lib
from bert4rec_jax.workdir import CheckpointError

BEST_METRIC_KEY = "selection_score"


@dataclasses.dataclass
class LoopState:
    """What the training loop knows beyond the train state; saved with every checkpoint, so a
    rerun continues early stopping where it was (and a stopped run stays stopped).

    Attributes:
      best_score: the best validation score so far (eval.metric); None before any validation.
      best_step: the step that scored it.
      evals_without_gain: validations since the last improvement.
      stopped_early: the run ended by early stopping; nothing more is trained.
    """

    best_score: float | None = None
    best_step: int | None = None
    evals_without_gain: int = 0
    stopped_early: bool = False


def _step_dirs(directory: epath.Path) -> list[int]:
    """Steps of the complete checkpoints in an Orbax manager's directory (none if it is absent)."""
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def set_aside_stale(
    workdir: epath.PathLike, config: ml_collections.ConfigDict | None = None
) -> list[str]:
    """Keeps a workdir's results consistent with its checkpoints: the same lineage or nothing.

    Best parameters or test results that no checkpoint leads to belong to an earlier run (its
    checkpoints were deleted, or it crashed before its first one): training from step 0 beside
    them would leave a model this run did not train in `best/` and in the results. They are
    moved (kept, not deleted) into `<workdir>/set_aside/<UTC time>/`, with a warning; so is a
    results file stamped at a later checkpoint step than the latest one. Results kept beside
    checkpoints but stamped with another config's hash than `config`'s are named in a log line:
    this run replaces them when it tests. Every process must call it (process 0 moves).

    Returns:
      The names moved (empty: the workdir was consistent).
    """
    workdir = epath.Path(workdir)
    steps = _step_dirs(workdir / workdir_lib.CHECKPOINTS_DIR)
    stale = []
    if not steps:
        stale += [name for name in (workdir_lib.BEST_DIR,) if _step_dirs(workdir / name)]
        stale += [workdir_lib.RESULTS_FILE] if (workdir / workdir_lib.RESULTS_FILE).exists() else []
    else:
        stamp = workdir_lib.read_results(workdir).get("run", {})
        if stamp.get("checkpoint_step", -1) > steps[-1]:
            stale.append(workdir_lib.RESULTS_FILE)
        elif config is not None and stamp.get("config_hash", workdir_lib.config_hash(config)) != (
            workdir_lib.config_hash(config)
        ):
            logging.info(
                "%s holds the results of config %s at checkpoint step %s; this run's config is "
                "%s, and its results replace them when it tests",
                workdir_lib.RESULTS_FILE,
                stamp["config_hash"],
                stamp.get("checkpoint_step"),
                workdir_lib.config_hash(config),
            )
    if jax.process_count() > 1:  # every process decided before process 0 moves anything
        multihost_utils.sync_global_devices("bert4rec_jax: stale results found")
    if stale:
        # Each stale entry's per-user file goes with it (named in the returned list only).
        companions = [
            workdir_lib.COMPANIONS[name] for name in stale if name in workdir_lib.COMPANIONS
        ]
        moved = stale + [name for name in companions if (workdir / name).exists()]
        where = _move_aside(workdir, moved)
        logging.warning(
            "%s in %s came from an earlier run that no checkpoint here continues (latest "
            "checkpoint: %s); moved to %s, so that this run's results are its own",
            " and ".join(stale),
            workdir,
            steps[-1] if steps else "none",
            where,
        )
        return moved
    return stale


def set_aside_run(workdir: epath.PathLike) -> list[str]:
    """Moves a workdir's checkpoints, best parameters and test results into
    `<workdir>/set_aside/<UTC time>/` (kept, not deleted), so that a run starts afresh. Every
    process must call it (process 0 moves).

    Returns:
      The names moved.
    """
    workdir = epath.Path(workdir)
    present = [name for name in workdir_lib.RUN_ENTRIES if (workdir / name).exists()]
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("bert4rec_jax: run to set aside")
    if present:
        where = _move_aside(workdir, present)
        logging.warning("Starting afresh: moved %s to %s", ", ".join(present), where)
    return present


def _move_aside(workdir: epath.Path, names: list[str]) -> epath.Path:
    target = (
        workdir
        / workdir_lib.SET_ASIDE_DIR
        / (time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{uuid.uuid4().hex[:6]}")
    )
    if jax.process_index() == 0:
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            (workdir / name).rename(target / name)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("bert4rec_jax: set aside")
    return target


def _barrier_prefix(name: str) -> ocp.options.MultiprocessingOptions:
    # Both managers save at the same step (validation and checkpoint steps coincide); on several
    # processes Orbax's barriers are named by step, so they would collide without a prefix.
    return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)


class _Manager(ocp.CheckpointManager):
    """A CheckpointManager that leaves JAX's preemption sync point to the training loop alone.

    `reached_preemption_sync_point(step)` is true only at the step equal to one more than the
    step of the last call made before the SIGTERM arrived, in whichever thread. Orbax calls it
    too, and from its `save_finalize` thread with the step of the checkpoint it is finishing,
    already behind the loop's: a SIGTERM arriving after such a call sets the sync point at a
    step the loop has passed, and the run never stops. The loop (`preemption.requested`) asks
    at every step and saves on preemption itself, so Orbax needs no answer.
    """

    def reached_preemption(self, step: int) -> bool:
        del step
        return False


class Checkpointer:
    """The two checkpoint managers of a workdir. Every process must call every method."""

    def __init__(self, workdir: epath.PathLike, *, keep: int, use_async: bool = True):
        self._workdir = workdir_lib.absolute(workdir)
        self._latest = _Manager(
            self._workdir / workdir_lib.CHECKPOINTS_DIR,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=use_async,
                create=True,
                multiprocessing_options=_barrier_prefix("latest"),
            ),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "loop": ocp.JsonCheckpointHandler(),
            },
        )
        self._best = _Manager(
            self._workdir / workdir_lib.BEST_DIR,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1,
                best_fn=lambda metrics: metrics[BEST_METRIC_KEY],
                best_mode="max",
                enable_async_checkpointing=use_async,
                create=True,
                multiprocessing_options=_barrier_prefix("best"),
            ),
        )

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def save(self, step: int, state: Any, loop: LoopState) -> None:
        """Saves a train state and the loop's state (asynchronously); a saved step is skipped."""
        if step in self._latest.all_steps():
            return
        # A checkpoint must never outlive the best parameters its loop state points at: a run
        # killed between the two asynchronous saves would otherwise resume without them.
        self._best.wait_until_finished()
        self._latest.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                loop=ocp.args.JsonSave(dataclasses.asdict(loop)),
            ),
        )

    def restore_latest(
        self, abstract_state: Any, vocab_size: int | None = None
    ) -> tuple[Any, LoopState] | None:
        """The newest usable saved state, laid out like `abstract_state`, and the loop's state.

        `vocab_size` (V) lets the item rows differ from `abstract_state`'s: a checkpoint saved on
        another mesh shape holds V rows padded for its own model axis; they are padded (zeros) or
        cut to the target's. None = every shape must match.

        A checkpoint that cannot be read (truncated, partial, corrupted) is skipped with a warning
        naming it, and the one before it is tried. When an older one restores, the unreadable
        newer ones are moved to `<workdir>/unusable_checkpoints/` (kept, not deleted), so that
        training can save those steps again.

        Returns:
          (state, loop state), or None when there is no checkpoint.

        Raises:
          CheckpointError: no checkpoint is usable (nothing is moved), or one holds parameters of
            other shapes than `abstract_state` (another model or vocabulary).
        """
        steps = sorted(self._latest.all_steps(), reverse=True)
        if not steps:
            return None
        unusable = []
        for step in steps:
            where = self._latest.directory / str(step)
            try:
                # Shapes first: a checkpoint of another model is an error, not a damaged file.
                saved = self._latest.item_metadata(step)["state"]
                resize = _check_shapes(
                    where, getattr(saved, "tree", saved), abstract_state, vocab_size
                )
                restored = self._latest.restore(
                    step,
                    args=ocp.args.Composite(
                        # Non-strict only when item rows differ (checked above: padding only).
                        state=ocp.args.StandardRestore(abstract_state, strict=not resize),
                        loop=ocp.args.JsonRestore(),
                    ),
                )
                loop = LoopState(**restored["loop"])
            except CheckpointError:
                raise
            except Exception as e:  # any unreadable checkpoint: try the one before it
                cause = one_line_cause(e)
                logging.warning(
                    "Skipping unusable checkpoint of step %d (%s): %s", step, where, cause
                )
                unusable.append((step, f"step {step}: {cause}"))
                continue
            if unusable:
                self._set_aside([s for s, _ in unusable])
            logging.info("Resuming from checkpoint at step %d in %s", step, self._latest.directory)
            return restored["state"], loop
        raise CheckpointError(
            f"no usable checkpoint in {self._latest.directory}; nothing was changed. Each one "
            f"failed: " + "; ".join(why for _, why in unusable) + ". Move the directory away to "
            "start afresh."
        )

    def _set_aside(self, steps: list[int]) -> None:
        """Moves unreadable checkpoints out of the manager's directory (process 0 does it)."""
        target = self._workdir / workdir_lib.UNUSABLE_DIR
        if jax.process_index() == 0:
            target.mkdir(parents=True, exist_ok=True)
            for step in steps:
                destination = target / f"{step}-{uuid.uuid4().hex[:8]}"
                (self._latest.directory / str(step)).rename(destination)
                logging.warning("Moved unusable checkpoint of step %d to %s", step, destination)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("bert4rec_jax: unusable checkpoints set aside")
        self._latest.reload()

    def save_best(self, step: int, params: Any, score: float) -> None:
        """Offers parameters scored `score` on validation; Orbax keeps the best one."""
        if step in self._best.all_steps():
            return
        self._best.save(
            step, args=ocp.args.StandardSave(params), metrics={BEST_METRIC_KEY: float(score)}
        )

    def best_step(self) -> int | None:
        return self._best.best_step()

    def restore_best(self, abstract_params: Any, vocab_size: int | None = None) -> Any:
        """The best parameters laid out like `abstract_params` (waits for pending saves).

        `vocab_size`: as in `restore_latest` (the best ones may come from another mesh shape).
        """
        self._best.wait_until_finished()
        step = self._best.best_step()
        if step is None:
            raise FileNotFoundError(f"no best checkpoint in {self._best.directory}")
        saved = self._best.item_metadata(step)
        resize = _check_shapes(
            self._best.directory / str(step),
            getattr(saved, "tree", saved),
            abstract_params,
            vocab_size,
        )
        return self._best.restore(
            step, args=ocp.args.StandardRestore(abstract_params, strict=not resize)
        )

    def close(self) -> None:
        """Waits for pending asynchronous saves; call before the process exits."""
        self._latest.wait_until_finished()
        self._best.wait_until_finished()
        self._latest.close()
        self._best.close()


# TensorStore appends its whole spec and the C++ source locations to an error, in brackets: tens
# of lines that say nothing about the cause.
_NOISE = re.compile(r"\s*\[(tensorstore_spec|source locations)=.*?\](?=\s*(\[|$))", re.DOTALL)


def one_line_cause(error: BaseException, limit: int = 300) -> str:
    """`error` as one short line: its type and the first line of its message, without the
    TensorStore spec; the innermost cause of a chain is the one shown."""
    while error.__cause__ is not None and str(error.__cause__):
        error = error.__cause__
    text = _NOISE.sub("", str(error)).strip()
    first = " ".join(text.splitlines()[0].split()) if text else ""
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _check_shapes(
    where: epath.Path, saved: Any, abstract_state: Any, vocab_size: int | None = None
) -> bool:
    """Raises CheckpointError naming the first array whose saved shape differs from the model's.

    With `vocab_size` (V), item-row arrays (`sharding.ITEM_ROW_PARAMS`) may differ in their row
    count as long as both counts are >= V: the rows past V are a mesh's padding.

    Returns:
      Whether some item rows differ (the restore must then pad or cut them).
    """
    saved_leaves = {_names(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(saved)[0]}
    wanted = {_names(p) for p, _ in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    extra = sorted(set(saved_leaves) - wanted)
    if extra:  # arrays this model does not have: another kind of model (e.g. model.kind)
        missing = sorted(wanted - set(saved_leaves))
        raise CheckpointError(
            f"{where} holds {'/'.join(extra[0])}, which this config's model does not have"
            + (f" (and lacks its {'/'.join(missing[0])})" if missing else "")
            + ": the checkpoints belong to another model (see config.SHAPE_FIELDS). "
            "Nothing was changed."
        )
    resize = False
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]:
        name = "/".join(_names(path))
        have = saved_leaves.get(_names(path))
        if have is None:
            continue  # a missing array is a damaged checkpoint; restoring it reports that
        have_shape, want_shape = tuple(have.shape), tuple(leaf.shape)
        if (
            vocab_size is not None
            and have_shape != want_shape
            and _names(path)[-1] in sharding_lib.ITEM_ROW_PARAMS
            and len(have_shape) == len(want_shape) >= 1
            and have_shape[1:] == want_shape[1:]
            and min(have_shape[0], want_shape[0]) >= vocab_size
        ):
            resize = True
            continue
        if have_shape != want_shape:
            raise CheckpointError(
                f"{where} holds {name} of shape {tuple(have.shape)}, but this config builds "
                f"{tuple(leaf.shape)}: the checkpoints belong to another model or vocabulary "
                "(one of config.SHAPE_FIELDS differs: a model field that shapes the parameters, "
                "the data set or its fields). Nothing was changed."
            )
    return resize


def _names(path: tuple) -> tuple[str, ...]:
    """A tree path as names, alike for a dataclass's attributes and a saved dict's keys."""
    return tuple(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path)


def restore_params(
    workdir: epath.PathLike, which: str = "best", vocab_size: int | None = None
) -> tuple[Any, int]:
    """Parameters of a finished or running workdir, for evaluation and export.

    They are restored onto this process's first device whatever mesh saved them, so a run trained
    on many devices (or processes) can be evaluated or exported on one.

    Args:
      workdir: the run's workdir.
      which: "best" (the best validation checkpoint; falls back to the latest state when the run
        kept none, e.g. in paper split mode) or "latest".
      vocab_size: V; when given, item rows a sharded run padded its table with are cut, so the
        parameters have the model's shapes whatever mesh saved them. None = as saved.

    Returns:
      (params as a pytree of arrays, the step they come from).
    """
    workdir = workdir_lib.absolute(workdir)
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    if which == "best" and (workdir / workdir_lib.BEST_DIR).exists():
        params, step = _restore_on_one_device(workdir / workdir_lib.BEST_DIR, best=True)
        if params is not None:
            return _unpadded(params, vocab_size), step
    state, step = restore_train_state(workdir)
    return _unpadded(state["params"], vocab_size), step


def _unpadded(params: Any, vocab_size: int | None) -> Any:
    if vocab_size is None:
        return params
    return sharding_lib.fit_item_rows(params, vocab_size)


def restore_train_state(workdir: epath.PathLike, step: int | None = None) -> tuple[Any, int]:
    """A saved train state (a dict: step, params, opt_state, rng) on this process's first device.

    Args:
      workdir: the run's workdir.
      step: which checkpoint; None = the latest.

    Returns:
      (the state, its step).

    Raises:
      FileNotFoundError: when there is no such checkpoint.
    """
    directory = workdir_lib.absolute(workdir) / workdir_lib.CHECKPOINTS_DIR
    state, found = _restore_on_one_device(directory, best=False, step=step)
    if state is None:
        raise FileNotFoundError(f"no checkpoint {'' if step is None else step} in {directory}")
    return state, found


def _restore_on_one_device(
    directory: epath.Path, *, best: bool, step: int | None = None
) -> tuple[Any, int | None]:
    """The best parameters, or a train state (default the latest), on one device; (None, None)
    if there is none."""
    if not directory.exists():
        return None, None
    options = ocp.CheckpointManagerOptions(
        read_only=True,
        create=False,
        best_fn=(lambda m: m[BEST_METRIC_KEY]) if best else None,
        best_mode="max",
    )
    # best/ holds the parameters as its one item; checkpoints/ holds the items state and loop.
    handlers = (
        ocp.StandardCheckpointHandler() if best else {"state": ocp.StandardCheckpointHandler()}
    )
    with ocp.CheckpointManager(directory, options=options, item_handlers=handlers) as mgr:
        if step is None:
            step = mgr.best_step() if best else mgr.latest_step()
        if step is None or step not in mgr.all_steps():
            return None, None
        # The saved shardings name the training mesh's devices; without a target of our own,
        # Orbax refuses to restore on another topology.
        metadata = mgr.item_metadata(step) if best else mgr.item_metadata(step)["state"]
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            getattr(metadata, "tree", metadata),
        )
        if best:
            return mgr.restore(step, args=ocp.args.StandardRestore(target)), step
        restored = mgr.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )
        return restored["state"], step
