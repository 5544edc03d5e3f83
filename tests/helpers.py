"""Helpers shared by test files (imported as `helpers`; pytest puts tests/ on the path).

Imports no jax: conftest.py imports it before setting the environment jax reads on import.
"""

import dataclasses
import importlib.metadata
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import ml_collections
import numpy as np

from bert4rec_jax.datasets.corpus import Corpus, corpus_from_sequences
from configs import tiny

# XLA aborts every process at its first jax call on a flag it does not know ("Unknown flag in
# XLA_FLAGS"), so the fusion-emitter flag goes only to the jaxlib it was measured with (0.10):
# a later one may have dropped it, and its tests then run with XLA's default emitters.
_OLD_FUSION_EMITTERS = tuple(
    int(part) for part in importlib.metadata.version("jaxlib").split(".")[:2]
) < (0, 11)


def xla_flags(devices: int, fast_compile: bool = True) -> str:
    """XLA_FLAGS for the test process and every process a test starts: `devices` simulated CPU
    devices, compiled for compiling fast unless `fast_compile` is False. The test programs are
    tiny, so they spend far longer being compiled than running:
    - LLVM's optimisation level 0 for the CPU code XLA emits (measured: 40 s of CPU instead of
      69 s for features_test + models_test);
    - XLA's older CPU fusion emitters (LLVM IR) instead of the new MLIR-based ones, which spend
      most of a small program's compile rewriting MLIR (measured on 2 cores, empty cache:
      train_test's bucketed-batch and sasrec_test's per-loss steps, 13 tests, 171 -> 97 s of
      CPU; one 8-device train step compiles in 1.8-1.9 s instead of 2.5-2.9 s).
    XLA's own passes (fusion, layout) still run. Results differ from the default flags' in the
    last bit (1 ulp after 3 train steps), so every process of a test that compares bits across
    processes must get these same flags, which is why they come from here. The code compiled so
    runs slower: a test that trains for minutes (train_test's ML-100K runs) asks for XLA's
    defaults (fast_compile=False).
    """
    flags = [f"--xla_force_host_platform_device_count={devices}"]
    if fast_compile:
        flags.append("--xla_backend_optimization_level=0")
        if _OLD_FUSION_EMITTERS:
            flags.append("--xla_cpu_use_fusion_emitters=false")
    return " ".join(flags)


def device_env(
    devices: int, base: dict[str, str] | None = None, fast_compile: bool = True, **extra: str
) -> dict[str, str]:
    """The environment for a process a test starts: `base` (default os.environ, which holds the
    session's compilation cache) with xla_flags(devices, fast_compile) and `extra`."""
    flags = xla_flags(devices, fast_compile)
    return dict(os.environ if base is None else base, XLA_FLAGS=flags, **extra)


def free_port() -> int:
    """A localhost port nothing listens on now (bound, then released), for a coordinator: a
    fixed port would clash when tests run side by side (pytest -n 2) or a port is taken."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


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
        set_field(config, key, value)
    return config


def set_field(config: ml_collections.ConfigDict, dotted: str, value) -> None:
    """Sets one field of a config, named with dots ("input.buckets")."""
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value


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


def run_cli(
    module: str, *args: str, check: bool = True, timeout: float = 600, env: dict | None = None
):
    """Runs one of the package's command lines as a user would, on one CPU device (`env`:
    device_env(1) unless given)."""
    out = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env or device_env(1),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out
