"""Helpers shared by test files (imported as `helpers`; pytest puts tests/ on the path)."""

import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys

import ml_collections
import numpy as np

from bert4rec_jax.datasets.corpus import Corpus, corpus_from_sequences
from configs import tiny


def random_corpus(lengths, num_items: int = 0, seed: int = 0) -> Corpus:
    """Random sequences without repeats; num_items=0 gives every interaction its own item, so an
    item identifies its user and its place in the sequence."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    if num_items:
        raw = np.concatenate(
            [rng.choice(num_items, size=n, replace=False) for n in lengths] + [np.zeros(0, int)]
        )
    else:
        raw = rng.permutation(int(offsets[-1]))
    return corpus_from_sequences("test", np.arange(len(lengths)), offsets, raw + 100)


def tiny_config(tmp_path, **overrides) -> ml_collections.ConfigDict:
    """configs/tiny.py with its data under tmp_path; overrides name fields with dots."""
    config = tiny.get_config()
    config.data_dir = str(tmp_path / "data")
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def checkpointed_config(tmp_path, **overrides) -> ml_collections.ConfigDict:
    """tiny_config saving every 5 steps and never validating (conftest's tiny_stopped_run)."""
    overrides = {"eval.every_steps": 0, "checkpoint_every_steps": 5, **overrides}
    return tiny_config(tmp_path, **overrides)


@dataclasses.dataclass(frozen=True)
class TinyRun:
    """A workdir trained by train_lib.train_and_evaluate in the test process."""

    config: object  # ml_collections.ConfigDict: the config it was trained with
    workdir: pathlib.Path
    results: dict  # what train_and_evaluate returned (its test metrics); {} if it stopped early


def copy_workdir(run: TinyRun, destination: pathlib.Path) -> pathlib.Path:
    """A private copy of a shared run's workdir, to change freely."""
    shutil.copytree(run.workdir, destination)
    return destination


REPO = pathlib.Path(__file__).resolve().parents[1]


def run_cli(module: str, *args: str, check: bool = True, timeout: float = 600):
    """Runs one of the package's command lines as a user would, on one CPU device."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    out = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out
