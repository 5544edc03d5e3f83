"""Orbax checkpoints of a training run: the latest K states for resuming, the best parameters.

A workdir (local or any path epath reads, e.g. gs://) holds:
  config.json    the run's config, written once by process 0
  checkpoints/   the last `keep` checkpoints, each two items: `state` (step, params, optimizer
                 state, rng) and `loop` (the loop's own state: best score and step, validations
                 without gain, whether it stopped early; JSON); the resume point
  best/          the parameters that scored best on validation, with their metrics

The data position is not stored: the input pipeline derives it from the step alone.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

CONFIG_FILE = "config.json"
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


def save_config(workdir: epath.PathLike, config: ml_collections.ConfigDict) -> None:
    """Writes the config beside the checkpoints (process 0 only; atomic rename)."""
    if jax.process_index() != 0:
        return
    path = epath.Path(workdir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (CONFIG_FILE + ".tmp")
    tmp.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    tmp.replace(path)


def load_config(workdir: epath.PathLike) -> ml_collections.ConfigDict:
    """Reads the config a run saved in its workdir."""
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: {workdir} is not a bert4rec_jax workdir (no run has started there)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    # Lists come back where the config held tuples; the fields that are tuples say so.
    for key in ("protocols", "ks"):
        if key in data.get("eval", {}):
            data["eval"][key] = tuple(data["eval"][key])
    return ml_collections.ConfigDict(data)


def _barrier_prefix(name: str) -> ocp.options.MultiprocessingOptions:
    # Both managers save at the same step (validation and checkpoint steps coincide); on several
    # processes Orbax's barriers are named by step, so they would collide without a prefix.
    return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)


class Checkpointer:
    """The two checkpoint managers of a workdir. Every process must call every method."""

    def __init__(self, workdir: epath.PathLike, *, keep: int, use_async: bool = True):
        workdir = absolute(workdir)
        self._latest = ocp.CheckpointManager(
            workdir / "checkpoints",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=use_async,
                create=True,
                multiprocessing_options=_barrier_prefix("latest"),
            ),
        )
        self._best = ocp.CheckpointManager(
            workdir / "best",
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
        self._latest.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                loop=ocp.args.JsonSave(dataclasses.asdict(loop)),
            ),
        )

    def restore_latest(self, abstract_state: Any) -> tuple[Any, LoopState] | None:
        """The latest saved state, laid out like `abstract_state`, and the loop's state.

        Returns:
          (state, loop state), or None when there is no checkpoint.
        """
        step = self._latest.latest_step()
        if step is None:
            return None
        logging.info("Resuming from checkpoint at step %d in %s", step, self._latest.directory)
        restored = self._latest.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), loop=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], LoopState(**restored["loop"])

    def save_best(self, step: int, params: Any, score: float) -> None:
        """Offers parameters scored `score` on validation; Orbax keeps the best one."""
        if step in self._best.all_steps():
            return
        self._best.save(
            step, args=ocp.args.StandardSave(params), metrics={BEST_METRIC_KEY: float(score)}
        )

    def best_step(self) -> int | None:
        return self._best.best_step()

    def restore_best(self, abstract_params: Any) -> Any:
        """The best parameters laid out like `abstract_params` (waits for pending saves)."""
        self._best.wait_until_finished()
        step = self._best.best_step()
        if step is None:
            raise FileNotFoundError(f"no best checkpoint in {self._best.directory}")
        return self._best.restore(step, args=ocp.args.StandardRestore(abstract_params))

    def close(self) -> None:
        """Waits for pending asynchronous saves; call before the process exits."""
        self._latest.wait_until_finished()
        self._best.wait_until_finished()
        self._latest.close()
        self._best.close()


def absolute(path: epath.PathLike) -> epath.Path:
    """`path` as an absolute epath.Path (Orbax wants them); a cloud path (gs://...) is one."""
    path = epath.Path(path)
    return path if "://" in str(path) else path.absolute()


def restore_params(workdir: epath.PathLike, which: str = "best") -> tuple[Any, int]:
    """Parameters of a finished or running workdir, for evaluation and export.

    They are restored onto this process's first device whatever mesh saved them, so a run trained
    on many devices (or processes) can be evaluated or exported on one.

    Args:
      workdir: the run's workdir.
      which: "best" (the best validation checkpoint; falls back to the latest state when the run
        kept none, e.g. in paper split mode) or "latest".

    Returns:
      (params as a pytree of arrays, the step they come from).
    """
    workdir = absolute(workdir)
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    if which == "best" and (workdir / "best").exists():
        params, step = _restore_on_one_device(workdir / "best", best=True)
        if params is not None:
            return params, step
    state, step = _restore_on_one_device(workdir / "checkpoints", best=False)
    if state is None:
        raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}")
    return state["params"], step


def _restore_on_one_device(directory: epath.Path, *, best: bool) -> tuple[Any, int | None]:
    """The best parameters, or the latest train state, on one device; (None, None) if none."""
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
        step = mgr.best_step() if best else mgr.latest_step()
        if step is None:
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
