"""A run's directory (a workdir: local or any path epath reads, e.g. gs://): its layout, its files.

Light on purpose (no JAX, no TensorFlow at import): the data sets' cache and the candidate cache
write their files with `write_atomically` too. Which checkpoints a config may resume is
`check_compatible`'s question: it compares the parsed configs' `RunConfig.shape_fields`.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import TYPE_CHECKING, Any

import ml_collections
from etils import epath

if TYPE_CHECKING:
    from bert4rec_jax.config import RunConfig

# A workdir holds:
CONFIG_FILE = "config.json"  # the run's config, written by process 0 before training
# The last `keep` checkpoints (each the train state and the loop's state): the resume point.
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"  # the parameters that scored best on validation, with their metrics
# The test metrics of the run's best (or last) parameters, stamped with the run's identity: the
# config's hash and the checkpoint step they were computed at.
RESULTS_FILE = "test_results.json"
METRICS_FILE = "metrics.jsonl"  # training and validation scalars by step, one JSON a line
TENSORBOARD_DIR = "tensorboard"  # the same scalars as TensorBoard event files
# Checkpoints that could not be restored are moved here (never deleted) when an older one can.
UNUSABLE_DIR = "unusable_checkpoints"
# What a fresh start or a stale lineage moves (kept, not deleted) into <workdir>/set_aside/<time>/.
SET_ASIDE_DIR = "set_aside"
RUN_ENTRIES = (CHECKPOINTS_DIR, BEST_DIR, RESULTS_FILE)
# Config fields that say where files are, not what is trained: left out of the config's hash.
UNHASHED_FIELDS = ("data_dir", "manual_dir")


class CheckpointError(RuntimeError):
    """A workdir's checkpoints cannot be used: none is readable, or they belong to another
    model. Nothing in the workdir was changed."""


def eval_results_file(model: str, split: str) -> str:
    """The file `bert4rec_jax.evaluate` writes its numbers to: eval_<model>_<split>.json."""
    return f"eval_{model}_{split}.json"


def absolute(path: epath.PathLike) -> epath.Path:
    """`path` as an absolute epath.Path (Orbax wants them); a cloud path (gs://...) is one."""
    path = epath.Path(path)
    return path if "://" in str(path) else path.absolute()


def write_atomically(path: epath.PathLike, data: bytes | str) -> None:
    """Writes a whole file or nothing: readers (other processes, other runs, a rerun after a
    crash) never see half of one. The temporary name is unique, so concurrent writers of the
    same file do not write into each other's; the last rename wins.
    """
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
    try:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _is_writer() -> bool:
    # Imported here, not at the top: the module stays importable without JAX (see above).
    import jax

    return jax.process_index() == 0


def save_config(workdir: epath.PathLike, config: ml_collections.ConfigDict) -> None:
    """Writes the config into the workdir (process 0 only)."""
    if _is_writer():
        path = epath.Path(workdir) / CONFIG_FILE
        write_atomically(path, config.to_json_best_effort(indent=2, sort_keys=True))


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


def open_run(
    workdir: epath.PathLike, *, data_dir: str | None = None, manual_dir: str | None = None
) -> tuple[epath.Path, ml_collections.ConfigDict]:
    """Opens a trained run for evaluation or export: its absolute path and its saved config.

    Args:
      workdir: the run's workdir.
      data_dir: overrides the run's config.data_dir (where its prepared corpus is); None keeps it.
      manual_dir: overrides the run's config.manual_dir (an offline copy of the source).

    Returns:
      (the workdir as an absolute path, the config with the overrides applied).
    """
    workdir = absolute(workdir)
    config = load_config(workdir)
    if data_dir is not None:
        config.data_dir = data_dir
    if manual_dir is not None:
        config.manual_dir = manual_dir
    return workdir, config


def check_compatible(workdir: epath.PathLike, run: RunConfig) -> None:
    """Refuses a config whose parameters could not be those of the workdir's checkpoints.

    Compares `run.shape_fields()` with those of the config saved in the workdir, before anything
    is written. The saved config is parsed as every config is (`RunConfig.from_config_dict`), so
    a config.json older than a field compares with the value its run had.

    Raises:
      CheckpointError: naming each field that differs, with both values.
    """
    workdir = epath.Path(workdir)
    if not (workdir / CONFIG_FILE).exists() or not (workdir / CHECKPOINTS_DIR).exists():
        return
    # type(run): this module imports no config (it would import the model, JAX and Flax).
    saved = type(run).from_config_dict(load_config(workdir))
    now = run.shape_fields()
    before = saved.shape_fields(dataset=run.data.dataset)
    differences = [
        f"{name}={now.get(name)!r} (the checkpoints have {before.get(name)!r})"
        for name in list(now) + [name for name in before if name not in now]
        if before.get(name) != now.get(name)
    ]
    if differences:
        raise CheckpointError(
            f"{workdir} holds checkpoints of another model: {'; '.join(differences)}. Use another "
            f"--workdir, or set these fields back. Nothing was changed."
        )


def config_hash(config: ml_collections.ConfigDict) -> str:
    """A short hash of the config, paths of data directories left out (`UNHASHED_FIELDS`)."""
    data = json.loads(config.to_json_best_effort(sort_keys=True))
    for name in UNHASHED_FIELDS:
        data.pop(name, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def write_results(
    workdir: epath.PathLike,
    results: dict[str, float],
    *,
    params_step: int,
    checkpoint_step: int,
    config: ml_collections.ConfigDict,
) -> None:
    """Writes the test results, stamped with the run's identity (process 0 only).

    `step` is the step of the tested parameters (the best validated ones, or the last), `run`
    the config's hash and the checkpoint step the run had reached when it tested them.
    """
    if not _is_writer():
        return
    record = {
        "step": params_step,
        **{k: float(v) for k, v in results.items()},
        "run": {"config_hash": config_hash(config), "checkpoint_step": checkpoint_step},
    }
    write_atomically(epath.Path(workdir) / RESULTS_FILE, json.dumps(record, indent=2))


def read_results(workdir: epath.PathLike) -> dict[str, Any]:
    """The test results a run wrote ({} when there are none)."""
    path = epath.Path(workdir) / RESULTS_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}; move it away and rerun") from e
