"""Shared test set-up: 8 virtual CPU devices (set before jax is imported) and the real data."""

import os
import pathlib

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


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not (SHARED_DATA / "beauty.txt").exists():
        pytest.fail(f"real data expected at {SHARED_DATA} (see README: Data sets)")
    return SHARED_DATA
