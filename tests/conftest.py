"""Shared test set-up: 8 virtual CPU devices (set before jax is imported), one persistent JAX
compilation cache for the session and every process it starts, the real data, trained workdirs
built once per run, and the order and grouping of tests for pytest-xdist (`-n 2`)."""

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile

from helpers import RANDOM_ITEMS, SERVED_TOP_K, VOCABULARIES, random_model, xla_flags  # no jax

# Sharding tests need several devices; on CPU they are simulated. Must precede `import jax`.
# Compiled at LLVM -O0 (helpers.xla_flags says why); every process a test starts gets the same
# flags from helpers.device_env, so bitwise comparisons between processes hold.
os.environ.setdefault("XLA_FLAGS", xla_flags(8))
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
    turns the cache off). Under pytest-xdist this runs in the controller before it starts the
    workers, which inherit the variable: one cache for them all. Several processes may write and
    read one entry at once (JAX writes entries in place, unlocked); a read of an entry being
    written fails its decompression, which JAX reports as a warning and answers by compiling."""
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


@pytest.fixture(autouse=True)
def _fresh_absl_log_level():
    """Each test sees the "absl" logger at a fresh process's level (NOTSET: the root's, which
    caplog sets). A command run in-process by an earlier test on the same worker can leave it
    higher (`benchmarks/crash_resume.py`'s main sets ERROR), which hid the INFO records that
    caplog tests read whenever fault_test had run first on their worker."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.NOTSET)
    yield
    logger.setLevel(level)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not (SHARED_DATA / "beauty.txt").exists():
        pytest.fail(f"real data expected at {SHARED_DATA} (see docs/data.md)")
    return SHARED_DATA


# ---- Shared trained workdirs ----------------------------------------------------------------
# Training, even 6 steps of configs/tiny.py, is the expensive part of a test: these runs are
# trained once per run of pytest, also under pytest-xdist (see `_built_once`), and shared. They are
# read-only; a test that changes a workdir (damages it, resumes it, evaluates into it) works on its
# own copy from helpers.copy_workdir. What imports jax (train_lib) is imported inside the
# fixtures, so that jax is first imported after pytest_configure.


@contextlib.contextmanager
def _built_once(tmp_path_factory: pytest.TempPathFactory, name: str):
    """Yields (directory, built): a directory that one process of this pytest run builds and all
    read. Alone, it is a fresh temporary directory (built=False: build it). Under pytest-xdist,
    every worker gets `<the run's temporary root>/<name>`: the first to ask builds it while
    holding a file lock (built=False), and the others wait on the lock and then find it built
    (built=True). pytest-xdist's documented way to share a session fixture between workers."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield tmp_path_factory.mktemp(name), False
        return
    from filelock import FileLock

    directory = tmp_path_factory.getbasetemp().parent / name  # the workers' common parent
    done = directory / ".built"
    with FileLock(f"{directory}.lock"):
        if done.exists():
            yield directory, True
            return
        shutil.rmtree(directory, ignore_errors=True)  # a build that failed part way
        directory.mkdir()
        yield directory, False
        done.touch()  # only once the build returned


def _trained_once(tmp_path_factory, name, config_fn, **train_kwargs):
    """helpers.TinyRun: config_fn(directory) trained in this process with
    train_lib.train_and_evaluate(config, directory/work, **train_kwargs), once per run."""
    from helpers import TinyRun

    from bert4rec_jax import train_lib

    with _built_once(tmp_path_factory, name) as (tmp, built):
        config = config_fn(tmp)  # the same for every worker: it depends on the path alone
        if not built:
            results = train_lib.train_and_evaluate(config, str(tmp / "work"), **train_kwargs)
            # Through JSON for every worker alike (floats stay exact; numpy scalars become float).
            (tmp / "results.json").write_text(json.dumps(results, default=float))
        results = json.loads((tmp / "results.json").read_text())
    return TinyRun(config, tmp / "work", results)


@pytest.fixture(scope="session")
def tiny_finished_run(tmp_path_factory):
    """A helpers.TinyRun: configs/tiny.py trained to the end on the 8 test devices: 6 steps,
    batch 24 (a multiple of 8, not of 16), checkpoints at 3 and 6, validation on pop100 and full
    at 3 and 6 (so a `best` checkpoint), test results written. For export, evaluation on other
    device counts, and any test that needs a finished workdir."""
    import jax
    from helpers import tiny_config

    assert jax.device_count() == 8

    def config(tmp):
        return tiny_config(
            tmp,
            batch_size=24,
            num_train_steps=6,
            warmup_steps=2,
            checkpoint_every_steps=3,
            **{"eval.every_steps": 3, "eval.protocols": ("pop100", "full")},
        )

    run = _trained_once(tmp_path_factory, "tiny_finished", config)
    assert run.results  # a finished run reports test metrics
    return run


@pytest.fixture(scope="session")
def tiny_stopped_run(tmp_path_factory):
    """A helpers.TinyRun: configs/tiny.py (20 steps) stopped at step 10 on the 8 test devices,
    with checkpoints at 5 and 10 and no validation: a run to resume, damage or refuse. Resume it
    with its own `config` (its data directory is prepared and only read); `checkpointed_config`
    in helpers gives the same config for another data directory."""
    from helpers import checkpointed_config

    run = _trained_once(tmp_path_factory, "tiny_stopped", checkpointed_config, stop_at_step=10)
    assert run.results == {}
    return run


# ---- Shared exports -------------------------------------------------------------------------
# Read by the tests of export/ and recommend/ alike; each worker loads its own Recommender (so a
# batch size compiles once per worker), the directories are written once per run.


@pytest.fixture(scope="session", params=sorted(VOCABULARIES))
def random_export(request, tmp_path_factory):
    """(export directory, vocabulary, its Recommender) of helpers.random_model, once with
    string and once with integer raw ids: for CPU only and with no SavedModel (`tiny_export`
    tests the defaults)."""
    from bert4rec_jax import export, recommend

    with _built_once(tmp_path_factory, f"random_export_{request.param}") as (tmp, built):
        output = tmp / "parent" / "export"  # alone in its parent (the test of leftovers looks)
        vocabulary = VOCABULARIES[request.param]
        if not built:
            model, params = random_model()
            export.export_model(model, params, vocabulary, output, top_k=RANDOM_ITEMS,
                                saved_model=False, platforms=["cpu"])  # fmt: skip
    return output, vocabulary, recommend.Recommender.load(output)


@dataclasses.dataclass(frozen=True)
class Exported:
    """A trained run's export: its experiment, its best parameters, the directories, what the
    export command printed, and a Recommender of the export."""

    exp: object  # experiment.Experiment
    params: object
    workdir: pathlib.Path
    output: pathlib.Path
    printed: str
    rec: object  # recommend.Recommender
    step: int  # of the exported parameters


def _exported_once(tmp_path_factory, name, config, workdir, *export_flags) -> Exported:
    """Exports `workdir` with the command line (a 1-device process) once per run."""
    from helpers import run_cli

    from bert4rec_jax import checkpointing, experiment, recommend
    from bert4rec_jax.config import RunConfig

    with _built_once(tmp_path_factory, name) as (tmp, built):
        output = tmp / "export"
        if not built:
            printed = run_cli("bert4rec_jax.export", f"--workdir={workdir}",
                              f"--output={output}", *export_flags).stdout  # fmt: skip
            (tmp / "printed.txt").write_text(printed)
        printed = (tmp / "printed.txt").read_text()
    params, step = checkpointing.restore_params(workdir, "best")
    exp = experiment.Experiment.from_run(RunConfig.from_config_dict(config))
    rec = recommend.Recommender.load(output)
    return Exported(exp, params, workdir, output, printed, rec, step)


@pytest.fixture(scope="session")
def tiny_export(tiny_finished_run, tmp_path_factory) -> Exported:
    """`tiny_finished_run` (trained on the 8 test devices) exported by a 1-device process with
    the defaults (SavedModel and every platform), top_k=20."""
    run = tiny_finished_run
    return _exported_once(tmp_path_factory, "tiny_export", run.config, run.workdir, "--top_k=20")


@pytest.fixture(scope="session")
def served(tmp_path_factory, shared_data) -> Exported:
    """4 steps of the tiny model on ML-100K (helpers.ml_100k_config), exported by the command
    line with top_k=SERVED_TOP_K, for CPU."""
    from helpers import ml_100k_config

    def config(tmp):
        return ml_100k_config(tmp, shared_data)

    run = _trained_once(tmp_path_factory, "ml100k_served", config)
    return _exported_once(tmp_path_factory, "ml100k_served_export", run.config, run.workdir,
                          f"--top_k={SERVED_TOP_K}", "--platforms=cpu")  # fmt: skip


# ---- Order under pytest-xdist --------------------------------------------------------------


# How long each test took (setup, call and teardown), kept in pytest's cache
# (.pytest_cache/) by `pytest_sessionfinish` after every run and read back to order the next one:
# measured, so it follows the tests as they change. A test the cache does not know (a clean
# clone, a new test, `-p no:cacheprovider`) counts an estimate by its marker: the slow ones are
# the end-to-end, multi-process and real-data runs.
DURATIONS_KEY = "bert4rec_jax/test_seconds"
ESTIMATED_SECONDS = {"slow": 10.0, "fast": 1.0}
_measured: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Adds up each test's phases; under pytest-xdist the controller receives every worker's."""
    _measured[report.nodeid] = _measured.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Merges this run's measured seconds into the cache (in the controller, or alone)."""
    cache = getattr(session.config, "cache", None)
    if cache is None or os.environ.get("PYTEST_XDIST_WORKER") or not _measured:
        return
    recorded = {
        nodeid: seconds
        for nodeid, seconds in cache.get(DURATIONS_KEY, {}).items()
        if (session.config.rootpath / nodeid.split("::")[0]).exists()  # files still there
    }
    cache.set(DURATIONS_KEY, recorded | _measured)


@pytest.hookimpl(trylast=True)  # after -m/-k deselection and pytest's own reordering
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The selected files from the longest to the shortest, each file's tests in their order.

    With `-n 2` pytest-xdist hands out whole files (`--dist=loadscope` in setup.cfg: a file's
    module fixtures, such as a trained run or a reference run, are then built once, on one
    worker) in this order (`--no-loadscope-reorder`) to whichever worker has little left: the
    long files start first and the short ones fill the end, so the two workers finish close
    together rather than one running a long file alone at the end. A file's cost is the sum of
    its selected tests' seconds, measured by earlier runs (`DURATIONS_KEY`) or estimated
    (`ESTIMATED_SECONDS`), so `-m "not slow"` (the quick loop) is ordered by its own long files.
    conftest's own session fixtures are shared between workers by `_built_once`. Without xdist
    only the order changes.
    """
    cache = getattr(config, "cache", None)  # None under -p no:cacheprovider
    recorded = cache.get(DURATIONS_KEY, {}) if cache is not None else {}
    costs: dict[pathlib.Path, float] = {}
    for item in items:
        kind = "slow" if item.get_closest_marker("slow") else "fast"
        seconds = recorded.get(item.nodeid, ESTIMATED_SECONDS[kind])
        costs[item.path] = costs.get(item.path, 0.0) + seconds
    # Stable: each file's tests keep their order, and files of equal cost their collection order.
    items.sort(key=lambda item: -costs[item.path])
