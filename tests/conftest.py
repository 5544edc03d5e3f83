"""Shared test set-up: 8 virtual CPU devices (set before jax is imported), one persistent JAX
compilation cache for the session and every process it starts, and the real data."""

import os
import pathlib
import tempfile

# Sharding tests need several devices; on CPU they are simulated. Must precede `import jax`.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
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


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not (SHARED_DATA / "beauty.txt").exists():
        pytest.fail(f"real data expected at {SHARED_DATA} (see README: Data sets)")
    return SHARED_DATA
