"""Helpers shared by test files (imported as `helpers`; pytest puts tests/ on the path).

Imports no jax: conftest.py imports it before setting the environment jax reads on import.
"""

import contextlib
import dataclasses
import functools
import http.server
import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import threading

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


def make_corpus(
    sequences: list[list[int]], name: str = "toy", times: list[list[float]] | None = None
) -> Corpus:
    """A corpus from raw item sequences (raw ids 1..V map to dense ids 1..V when all are used);
    `times`, each user's interactions' seconds (non-decreasing), give it timestamps."""
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sequences])])
    items = np.concatenate([np.asarray(s, np.int64) for s in sequences])
    stamps = None if times is None else np.concatenate([np.asarray(t, np.int64) for t in times])
    return corpus_from_sequences(name, np.arange(len(sequences)), offsets, items, timestamps=stamps)


def make_evaluator(corpus, split, fns=None, *, cache_dir=None, **config):
    """An evaluation.Evaluator on all the test devices; `config` holds EvalConfig fields;
    `fns` defaults to the popularity baseline's."""
    from bert4rec_jax import evaluation, scoring, sharding  # jax: imported only once asked

    fns = fns or scoring.popularity_fns(corpus)[0]
    return evaluation.Evaluator(
        corpus, split, evaluation.EvalConfig(**config), fns, mesh=sharding.make_mesh(),
        cache_dir=cache_dir,
    )  # fmt: skip


def random_corpus(
    lengths,
    num_items: int = 0,
    seed: int = 0,
    *,
    max_length: int = 0,
    repeats: bool = False,
    every_item: bool = False,
) -> Corpus:
    """The tests' one random corpus.

    Args:
      lengths: each user's number of items; or, with `max_length`, the number of users, each
        with 3 to `max_length` items drawn at random.
      num_items: items to draw from; 0 gives every interaction its own item, so an item
        identifies its user and its place in the sequence.
      seed: of the draws.
      max_length: see `lengths`.
      repeats: a user may meet an item more than once (drawn with replacement).
      every_item: add two-item users (too short to be evaluated) until every item occurs, so
        dense id i is the i-th item drawn from.
    """
    rng = np.random.default_rng(seed)
    if max_length:
        lengths = rng.integers(3, max_length + 1, int(lengths))
    lengths = [int(n) for n in lengths]
    if not num_items:
        raw = np.split(rng.permutation(sum(lengths)), np.cumsum(lengths)[:-1])
    elif repeats:
        raw = [rng.integers(0, num_items, n) for n in lengths]
    else:
        raw = [rng.choice(num_items, size=n, replace=False) for n in lengths]
    if every_item:
        raw += [np.array([i, (i + 1) % num_items]) for i in range(0, num_items, 2)]
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in raw])])
    items = np.concatenate([np.asarray(r, np.int64) for r in raw] + [np.zeros(0, np.int64)])
    return corpus_from_sequences("test", np.arange(len(raw)), offsets, items + 100)


def small_model_config(vocab_size: int, max_len: int, **overrides):
    """A models.ModelConfig small enough to compile in seconds: d 16, one block of 2 heads, FFN
    32; `overrides` change any field."""
    from bert4rec_jax import models  # jax: imported only once a test asks

    fields = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}
    return models.ModelConfig(vocab_size=vocab_size, max_len=max_len, **(fields | overrides))


def small_model(vocab_size: int, max_len: int, **overrides):
    """The model of `small_model_config` (BERT4Rec unless `kind=` says otherwise)."""
    from bert4rec_jax import models

    return models.build_model(small_model_config(vocab_size, max_len, **overrides), vocab_size)


def random_params(model, scale: float = 0.5, seed: int = 0):
    """Variables ({"params": ...}) of the model's shapes with N(0, scale^2) values: running
    init would compile it (seconds on 2 cores)."""
    import jax
    import jax.numpy as jnp

    max_len = model.config.max_len
    shapes = jax.eval_shape(
        lambda: model.init(
            jax.random.key(0),
            jnp.zeros((1, max_len), jnp.int32),
            jnp.zeros((1, 1), jnp.int32),
            train=False,
        )
    )
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0.0, scale, s.shape).astype(np.float32), shapes)


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


# ---- A randomly initialised model's export (conftest's random_export) -----------------------

RANDOM_ITEMS = 40
RANDOM_MAX_LEN = 12
# Items 1..3 get a large output bias, so they top every history's ranking unless excluded.
POPULAR = (1, 2, 3)
VOCABULARIES = {
    # What Corpus.raw_item_ids holds: entry 0 stands for padding.
    "strings": np.array([""] + [f"sku-{i:03d}" for i in range(1, RANDOM_ITEMS + 1)]),
    "sparse ints": np.array([-1] + [1000 + 7 * i for i in range(1, RANDOM_ITEMS + 1)], np.int64),
}


def random_model():
    """(model, params): `small_model` of RANDOM_ITEMS items with random parameters, POPULAR
    items biased to the top."""
    model = small_model(RANDOM_ITEMS + 2, RANDOM_MAX_LEN)
    params = random_params(model)["params"]
    params["output_bias"][list(POPULAR)] = 50.0
    return model, params


# ---- A model served on real ML-100K histories (conftest's served) ---------------------------

SERVED_TOP_K = 100


def ml_100k_config(tmp, shared_data, **overrides) -> ml_collections.ConfigDict:
    """The tiny model (max_len 20) on ML-100K: 943 users, most of them longer than 19 items."""
    return tiny_config(
        tmp,
        dataset="ml-100k-raw",
        manual_dir=str(shared_data),
        num_train_steps=4,
        warmup_steps=1,
        checkpoint_every_steps=4,
        **{"eval.every_steps": 4, "eval.protocols": ("pop100",)},
        **overrides,
    )


def dense_histories(corpus: Corpus) -> list[np.ndarray]:
    """Every user's whole sequence, dense ids: the histories served."""
    return [corpus.sequence(u).astype(np.int32) for u in range(corpus.num_users)]


def in_process_top_k(exp, params, histories, users=None):
    """The model's top-k computed here, outside the artifact: build_inputs' layout on the last
    max_len - 1 items, every item of the whole history masked."""
    import jax
    import jax.numpy as jnp

    max_len, mask_id = exp.config.model.max_len, exp.corpus.mask_id
    ids = np.zeros((len(histories), max_len), np.int32)
    mask_pos = np.zeros(len(histories), np.int32)
    for row, h in enumerate(histories):
        window = h[-(max_len - 1) :]
        ids[row, : len(window)] = window
        ids[row, len(window)] = mask_id
        mask_pos[row] = len(window)
    fns = exp.scoring_fns
    users = None if users is None else jnp.asarray(users)
    h = jax.jit(fns.encode)(params, ids, mask_pos, users)
    items = np.arange(1, exp.corpus.num_items + 1, dtype=np.int32)
    scores = np.array(jax.jit(fns.score)(params, h, items))  # [n, V], writable
    for row, hist in enumerate(histories):
        scores[row, hist - 1] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :SERVED_TOP_K]
    return order + 1, np.take_along_axis(scores, order, axis=1)


# ---- Item losses' inputs (tests/losses/) ---------------------------------------------------

# The item losses' test batch (`head_batch`): B users, P predictions, H features, V rows;
B, P, H, V = 3, 4, 8, 23  # V = 23 with chunk 5: four full chunks and a partial one of 3


def head_batch(seed=0, dtype=np.float32):
    """Head features, the tied output layer and labels with padded (weight 0, label 0) slots:
    (h [B, P, H] of `dtype`, table [V, H], bias [V], labels [B, P], weights [B, P])."""
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    h = rng.normal(size=(B, P, H)).astype(np.float32)
    table = rng.normal(size=(V, H)).astype(np.float32)
    bias = rng.normal(size=(V,)).astype(np.float32)
    labels = rng.integers(1, V - 1, size=(B, P)).astype(np.int32)
    weights = (rng.random((B, P)) < 0.7).astype(np.float32)
    labels[weights == 0] = 0
    # Two identical columns with the highest scores, in different chunks: argmax ties, and the
    # first one (3) wins. Labels on both, so one tie counts as correct and the other not.
    table[17] = table[3]
    bias[3] = bias[17] = 50.0
    labels[0, :2] = (3, 17)
    weights[0, :2] = 1.0
    return jnp.asarray(h, dtype), table, bias, labels, weights


def loss_and_grads(fn, h, table, bias, labels, weights):
    """(gradients with respect to h, table and bias; the four sums) of loss `fn`, jitted."""
    import jax

    def loss(h, table, bias):
        sums = fn(h, table, bias, labels, weights)
        return sums["loss_sum"], sums

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(h, table, bias)


def full_fn(h, table, bias, labels, weights):
    """The materialised full softmax's sums: what every other item loss is compared with."""
    from bert4rec_jax import losses

    return losses.masked_cross_entropy(losses.full_logits(h, table, bias), labels, weights)


def numpy_reference(logits, labels, weights):
    """The four sums of the full softmax in float64 numpy: the reference of every item loss."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    correct = logits.argmax(-1) == labels
    return {
        "loss_sum": (weights * nll).sum(),
        "weight_sum": weights.sum(),
        "correct_sum": ((weights != 0) & correct).sum(),  # a count: accuracy is unweighted
        "prediction_count": (weights != 0).sum(),
    }


# ---- Data sets ----------------------------------------------------------------------------

# The git blob id of the paper's Beauty file (its download checksum).
BEAUTY_BLOB_ID = "16718a33ebdb33504f257421b18ae8bf3ddfe327"
# A synthetic data set that prepares in well under a second.
SMALL_SYNTHETIC = {"num_users": 50, "num_items": 40, "seed": 0}


def write_file(tmp_path: pathlib.Path, name: str, text: str | bytes) -> pathlib.Path:
    """Writes `text` (str as UTF-8, or bytes) to tmp_path / name, making its folders."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def files_under(path: pathlib.Path) -> list[str]:
    """Every file below `path`, relative to it, sorted: what a failed step must not leave."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


@contextlib.contextmanager
def serve_directory(directory):
    """An HTTP server on 127.0.0.1 (ephemeral port) serving `directory`; yields its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            del args

    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_as_user(module: str, *args: str, devices: int = 1, **env: str):
    """`python -m <module> <args>` in a subprocess, on `devices` CPU devices; stdout is a pipe
    (not a terminal), as in CI and in `... > log`."""
    environ = device_env(devices)
    # Not the test session's settings: a user's shell sets none of them.
    for name in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL"):
        environ.pop(name, None)
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )


def log_messages(printed: str) -> list[str]:
    """The messages of absl's log lines ("I1130 15:35:32.54 123 file.py:52] message")."""
    return [
        m.group(1) for m in re.finditer(r"^[IWEF]\d{4} [\d:.]+ +\d+ \S+\] (.*)$", printed, re.M)
    ]


def snapshot(directory: pathlib.Path) -> dict[str, bytes]:
    """Every file below `directory` and its bytes: to show a refusal changed nothing."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def heavy_imports(*modules: str) -> list[str]:
    """Which of jax, tensorflow and flax a fresh Python process holds after importing `modules`:
    for the modules that promise to stay light."""
    code = (
        f"import sys, {', '.join(modules)}; "
        "print(sorted(m for m in ('jax', 'tensorflow', 'flax') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().replace("'", '"'))


def pad_rows(rows: dict, n: int, p: int) -> dict:
    """Batch rows cut to a length bucket, padded back to n positions and p slots (padding is 0
    everywhere): what the unbucketed batch holds."""
    width = {"ids": n, "positions": p, "labels": p, "weights": p}
    return {
        k: np.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, width[k] - v.shape[-1])]) if k in width else v
        for k, v in rows.items()
    }


def write_timed_log(tmp_path: pathlib.Path, num_users: int = 120, num_items: int = 40):
    """A TSV log (header user, item, time; unix seconds over ~a year) whose users come and go
    at different dates, with a learnable next-item rule: for the temporal split's runs."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(num_users):
        days = np.sort(rng.integers(0, 200) + rng.integers(0, 160, rng.integers(8, 20)))
        item = int(rng.integers(1, num_items))
        for d in days:
            item = (item + int(rng.integers(1, 4))) % num_items + 1
            rows.append(f"u{u}\ti{item}\t{int(d) * 86_400}")
    return write_file(tmp_path, "log.tsv", "user\titem\ttime\n" + "\n".join(rows) + "\n")
