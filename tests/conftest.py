"""Shared test set-up: 8 virtual CPU devices (set before jax is imported), one persistent JAX
compilation cache for the session and every process it starts, and the real data."""

import os
import pathlib
import sys
import tempfile

# Sharding tests need several devices; on CPU they are simulated. Must precede `import jax`.
# LLVM's optimisation level 0 for the CPU code XLA emits: the test programs are tiny, so they
# spend far longer being compiled than running, and many tests run models op by op, each op its
# own compile (measured: 40 s of CPU instead of 69 s for features_test + models_test). XLA's own
# passes (fusion, layout) still run; results can differ from the default level's in the last bit
# (1 ulp after 3 train steps), which only matters across processes: tests that compare this
# process with a subprocess (which sets its own XLA_FLAGS) compare with tolerances, and bitwise
# comparisons stay within one process or between subprocesses.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

# ../shared/data beside the checkout: the paper's Beauty file and MovieLens 100K (never committed).
# BERT4REC_SHARED_DATA overrides it, e.g. for a git worktree that does not sit beside shared/.
SHARED_DATA = pathlib.Path(
    os.environ.get("BERT4REC_SHARED_DATA")
    or pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
)


def pytest_configure(config: pytest.Config) -> None:
    """Turns on JAX's persistent compilation cache through the environment, before any test
    module imports jax, so this process and every subprocess a test starts (they inherit
    os.environ) share it. The suite's cost is compiling: the same train step, encoder and rankers
    are compiled by many tests and many short-lived training processes, and with the cache each
    is compiled once. The cache lives in pytest's cache directory (.pytest_cache/), so later runs
    start warm; entries are keyed by the program, the devices and the jax/jaxlib versions, so a
    stale entry is never used. JAX_COMPILATION_CACHE_DIR set beforehand wins (an empty string
    turns the cache off)."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        cache = getattr(config, "cache", None)  # None under -p no:cacheprovider
        cache = cache.mkdir("jax_compilation_cache") if cache else None
        directory = cache or pathlib.Path(tempfile.mkdtemp(prefix="jax_compilation_cache_"))
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(directory)
    # Every program is worth keeping: the tests' programs are small and each compiles in well
    # under JAX's default threshold of one second, yet together they are most of the run.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
    if "jax" in sys.modules:  # imported already (by a plugin): it read the environment then
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not (SHARED_DATA / "beauty.txt").exists():
        pytest.fail(f"real data expected at {SHARED_DATA} (see README: Data sets)")
    return SHARED_DATA


# ---- Shared trained workdirs ----------------------------------------------------------------
# Training, even 6 steps of configs/tiny.py, is the expensive part of a test: these runs are
# trained once per session and shared. They are read-only; a test that changes a workdir (damages
# it, resumes it, evaluates into it) works on its own copy from helpers.copy_workdir. The helpers
# are imported inside the fixtures, so that jax is first imported after pytest_configure.


@pytest.fixture(scope="session")
def tiny_finished_run(tmp_path_factory):
    """A helpers.TinyRun: configs/tiny.py trained to the end on the 8 test devices: 6 steps,
    batch 24 (a multiple of 8, not of 16), checkpoints at 3 and 6, validation on pop100 and full
    at 3 and 6 (so a `best` checkpoint), test results written. For export, evaluation on other
    device counts, and any test that needs a finished workdir."""
    import jax
    from helpers import TinyRun, tiny_config

    from bert4rec_jax import train_lib

    assert jax.device_count() == 8
    tmp = tmp_path_factory.mktemp("tiny_finished")
    config = tiny_config(
        tmp,
        batch_size=24,
        num_train_steps=6,
        warmup_steps=2,
        checkpoint_every_steps=3,
        **{"eval.every_steps": 3, "eval.protocols": ("pop100", "full")},
    )
    results = train_lib.train_and_evaluate(config, str(tmp / "work"))
    assert results  # a finished run reports test metrics
    return TinyRun(config, tmp / "work", results)


@pytest.fixture(scope="session")
def tiny_stopped_run(tmp_path_factory):
    """A helpers.TinyRun: configs/tiny.py (20 steps) stopped at step 10 on the 8 test devices,
    with checkpoints at 5 and 10 and no validation: a run to resume, damage or refuse. Resume it
    with its own `config` (its data directory is prepared and only read); `checkpointed_config`
    in helpers gives the same config for another data directory."""
    from helpers import TinyRun, checkpointed_config

    from bert4rec_jax import train_lib

    tmp = tmp_path_factory.mktemp("tiny_stopped")
    config = checkpointed_config(tmp)
    assert train_lib.train_and_evaluate(config, str(tmp / "work"), stop_at_step=10) == {}
    return TinyRun(config, tmp / "work", {})
