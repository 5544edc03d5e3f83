"""Tests of the device input path (same rules as tf.data, statistics, determinism, sharding,
exact resume through the real train step) and of host batches prefetched to the devices."""

import itertools
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import device_env, free_port, pad_rows, random_corpus, small_model
from scipy import stats

from bert4rec_jax import input_pipeline, optimizer
from bert4rec_jax import sharding as sharding_lib
from bert4rec_jax import train_step as train_step_lib
from bert4rec_jax.config import RunConfig
from bert4rec_jax.datasets.corpus import leave_one_out
from bert4rec_jax.device_input import DeviceInput
from bert4rec_jax.input_pipeline import InputConfig, TrainingInstances

# Statistical checks: |observed - expected| within Z_BOUND binomial standard deviations. With
# 5 sd a single check fails by chance with probability 6e-7 (3e-4 for 500 windows at once); the
# draws are seeded, so a pass cannot turn into a flake.
Z_BOUND = 5.0


def _draw(source: DeviceInput, steps_: range) -> dict[str, np.ndarray]:
    """Rows of several steps' batches (with their instances), concatenated on the host."""
    batches = [jax.device_get(source.batch_with_instances(s)) for s in steps_]
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _within_binomial(count, trials, p) -> np.ndarray:
    return np.abs(count - trials * p) <= Z_BOUND * np.sqrt(trials * p * (1 - p))


def _original(rows: dict[str, np.ndarray]) -> np.ndarray:
    """The rows' ids with the masked items put back (int64 [R, N])."""
    ids = rows["ids"].astype(np.int64)
    r, c = np.nonzero(rows["weights"])
    ids[r, rows["positions"][r, c]] = rows["labels"][r, c]
    return ids


def _check_rules(corpus, split, config: InputConfig, rows: dict[str, np.ndarray]) -> np.ndarray:
    """Exact cloze rules on every row; returns the masked positions (bool [R, N])."""
    reference = TrainingInstances(corpus, split, config)  # the tf.data path's instances
    windows = reference.windows
    n, pmax = config.max_len, config.max_predictions
    instance = rows["instance"].astype(np.int64)
    assert ((instance >= 0) & (instance < reference.num_instances)).all()
    is_last = instance >= reference.num_masked_rows
    window = np.where(is_last, instance - reference.num_masked_rows, instance % len(windows))
    lengths = windows.lengths[window].astype(np.int64)
    starts = windows.starts[window]
    ids, positions, labels, weights = (rows[k] for k in ("ids", "positions", "labels", "weights"))
    num_rows = len(instance)
    assert ids.shape == (num_rows, n) and ids.dtype == np.int32
    assert positions.shape == labels.shape == weights.shape == (num_rows, pmax)
    assert positions.dtype == labels.dtype == np.int32 and weights.dtype == np.float32

    # Masked count: the formula for the window's length, 1 for mask-last rows.
    k = weights.sum(axis=1).astype(np.int64)
    np.testing.assert_array_equal(
        k, np.where(is_last, 1, input_pipeline.num_masked(lengths, config))
    )
    real = np.arange(pmax) < k[:, None]
    np.testing.assert_array_equal(weights, real.astype(np.float32))  # real slots first
    assert not positions[~real].any() and not labels[~real].any()  # padding slots are 0
    # Within the window, distinct and sorted: strictly increasing over the real slots.
    assert ((positions >= 0) & (np.where(real, positions, -1) < lengths[:, None])).all()
    assert (np.diff(positions, axis=1) > 0)[real[:, 1:]].all()
    # The mask-last rows mask exactly the last item.
    np.testing.assert_array_equal(positions[is_last, 0], lengths[is_last] - 1)
    # Labels are the window's original items; ids are the window's items except where masked.
    offsets = np.arange(n)
    window_items = corpus.items[starts[:, None] + np.minimum(offsets, lengths[:, None] - 1)]
    window_items = np.where(offsets < lengths[:, None], window_items, 0)  # [R, N], padded
    np.testing.assert_array_equal(labels, np.take_along_axis(window_items, positions, 1) * real)
    masked = np.zeros_like(ids, dtype=bool)
    r, c = np.nonzero(real)
    masked[r, positions[r, c]] = True
    np.testing.assert_array_equal(ids[~masked], window_items[~masked])
    assert (ids[is_last][masked[is_last]] == corpus.mask_id).all()  # always [MASK]

    # The tf.data path's row of the same instance: same window items and the same k.
    tf_rows = reference.materialize(instance, epoch=0)
    np.testing.assert_array_equal(_original(rows), _original(tf_rows))
    np.testing.assert_array_equal(k, tf_rows["weights"].sum(axis=1))
    return masked


# ---- The rules, on every drawn row ---------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # fixed copies, [MASK]
        {"fresh_masks": True, "mask_replacement": "bert"},
        {"mask_last_copy": False, "mask_prob": 1.0},  # k = min(P, n): every item of short rows
    ],
)
def test_rows_follow_the_tf_data_rules(overrides):
    # Lengths 1..37 (some longer than max_len, so several windows per user); 80 items.
    corpus = random_corpus(np.arange(1, 61) % 37 + 1, num_items=80)
    split = leave_one_out(corpus, "standard")
    config = InputConfig(
        **{
            "max_len": 20,
            "mask_prob": 0.3,
            "max_predictions": 5,
            "sliding_step": 4,
            "dupe_factor": 3,
            "seed": 7,
            **overrides,
        }
    )
    source = DeviceInput(corpus, split, config, 64, sharding_lib.make_mesh())
    rows = _draw(source, range(4))
    masked = _check_rules(corpus, split, config, rows)
    if config.mask_replacement == "mask":
        assert (rows["ids"][masked] == corpus.mask_id).all()
    is_last = rows["instance"] >= source.num_windows * config.copies
    assert is_last.any() == config.mask_last_copy


def test_statistics_of_windows_mask_last_rows_and_positions():
    # Lengths 3..46 over max_len 12 and step 5: 1..8 windows per user.
    corpus = random_corpus(np.arange(200) % 44 + 3, num_items=60, seed=1)
    split = leave_one_out(corpus, "standard")
    config = InputConfig(
        max_len=12,
        mask_prob=0.4,
        max_predictions=6,
        sliding_step=5,
        dupe_factor=2,
        fresh_masks=True,
        seed=3,
    )
    source = DeviceInput(corpus, split, config, 2048, sharding_lib.make_mesh())
    rows = _draw(source, range(10))  # 20,480 rows
    masked = _check_rules(corpus, split, config, rows)
    total, w = len(rows["instance"]), source.num_windows
    # fresh masks: 1 masked copy + 1 mask-last copy per window, as in a tf.data epoch.
    assert source.num_instances == 2 * w
    is_last = rows["instance"] >= w
    assert _within_binomial(is_last.sum(), total, 1 / 2)
    window = np.where(is_last, rows["instance"] - w, rows["instance"])
    counts = np.bincount(window, minlength=w)
    assert _within_binomial(counts, total, 1 / w).all()
    # And jointly: the chi-square statistic of the window counts, under its 1e-6 quantile.
    chi2 = ((counts - total / w) ** 2 / (total / w)).sum()
    assert chi2 < stats.chi2.ppf(1 - 1e-6, w - 1)

    # Positions: in rows of n items, each position is masked with probability k(n) / n.
    lengths = TrainingInstances(corpus, split, config).windows.lengths[window]
    for n in np.unique(lengths[~is_last]):
        sel = ~is_last & (lengths == n)
        if sel.sum() < 200:
            continue
        k = int(input_pipeline.num_masked(np.array([n]), config)[0])
        per_position = masked[sel][:, :n].sum(axis=0)
        assert _within_binomial(per_position, sel.sum(), k / n).all(), (n, per_position)


def test_bert_mode_proportions():
    corpus = random_corpus(np.full(100, 52), num_items=1000)
    split = leave_one_out(corpus, "standard")
    config = InputConfig(
        max_len=50, mask_prob=0.5, max_predictions=25, fresh_masks=True, mask_replacement="bert"
    )
    source = DeviceInput(corpus, split, config, 512, sharding_lib.make_mesh())
    rows = _draw(source, range(2))
    masked = _check_rules(corpus, split, config, rows)
    sel = masked & (rows["instance"] < source.num_windows)[:, None]  # not mask-last rows
    original = _original(rows)
    inputs, items = rows["ids"][sel], original[sel]
    is_mask, is_kept = inputs == corpus.mask_id, inputs == items
    is_random = ~is_mask & ~is_kept
    for count, p in ((is_mask.sum(), 0.8), (is_kept.sum(), 0.1), (is_random.sum(), 0.1)):
        # A random item may equal the original (1 in 1000): within the bounds' slack.
        assert _within_binomial(count, sel.sum(), p), (count, sel.sum(), p)
    assert inputs[is_random].min() >= 1 and inputs[is_random].max() <= corpus.num_items


def test_fixed_copies_keep_their_masks_and_fresh_masks_change():
    corpus = random_corpus(np.full(20, 12), num_items=40)  # 20 windows of 10 items, 3 masked
    split = leave_one_out(corpus, "standard")

    def draw(fresh: bool) -> dict[int, list]:
        config = InputConfig(max_len=10, mask_prob=0.3, max_predictions=4, fresh_masks=fresh)
        source = DeviceInput(corpus, split, config, 64, sharding_lib.make_mesh())
        rows = _draw(source, range(8))  # 512 rows
        is_last = rows["instance"] >= source.num_windows * config.copies
        # The share of mask-last rows is a tf.data epoch's: 1 / (copies + 1).
        assert _within_binomial(is_last.sum(), len(is_last), 1 / (config.copies + 1))
        masks: dict[int, list] = {}  # every draw's positions, by masked instance
        for i, p in zip(rows["instance"][~is_last], rows["positions"][~is_last], strict=True):
            masks.setdefault(int(i), []).append(tuple(p))
        return masks

    fixed = draw(False)  # 200 instances (10 copies of each window), ~2.1 draws each
    assert sum(len(v) >= 2 for v in fixed.values()) > 50  # many drawn several times ...
    assert all(len(set(v)) == 1 for v in fixed.values())  # ... always with the same mask
    by_window: dict[int, set] = {}
    for i, v in fixed.items():
        by_window.setdefault(i % 20, set()).update(v)
    assert all(len(v) > 1 for v in by_window.values())  # copies of a window differ
    fresh = draw(True)  # 20 masked instances, ~12.8 draws each (C(10, 3) = 120 masks)
    assert all(len(set(v)) > 1 for v in fresh.values())


def test_mask_last_weight_weighs_exactly_the_mask_last_rows():
    corpus, split, config = _small()
    mesh = sharding_lib.make_mesh()
    assert config.mask_last_weight == 1.0 and config.mask_last_share == 0.0  # the defaults
    base = DeviceInput(corpus, split, config, 32, mesh)  # compiled already by other tests
    heavy = InputConfig(**{**vars(config), "mask_last_weight": 2.0})
    weighted = DeviceInput(corpus, split, heavy, 32, mesh)
    a, b = _draw(base, range(6)), _draw(weighted, range(6))
    for key in ("ids", "positions", "labels", "instance"):  # the same rows, only reweighted
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    _check_rules(corpus, split, config, a)  # by default every real prediction weighs 1
    is_last = a["instance"] >= base.num_windows * config.copies
    assert 0 < is_last.sum() < len(is_last)
    np.testing.assert_array_equal(b["weights"], a["weights"] * np.where(is_last, 2, 1)[:, None])
    np.testing.assert_array_equal(b["weights"][is_last].sum(axis=1), 2.0)


def test_mask_last_share_sets_the_probability_of_a_mask_last_row():
    corpus, split, config = _small()
    config = InputConfig(**{**vars(config), "fresh_masks": True, "mask_last_share": 0.6})
    source = DeviceInput(corpus, split, config, 2048, sharding_lib.make_mesh())
    w = source.num_windows
    m = config.num_mask_last(w)  # 1.5 W mask-last instances per W masked ones
    assert source.num_instances == w + m and m > w
    rows = _draw(source, range(2))  # 4096 rows
    _check_rules(corpus, split, config, rows)  # instance W * C + w: a mask-last row of window w
    is_last = rows["instance"] >= w
    assert _within_binomial(is_last.sum(), len(is_last), m / (w + m))  # ~ the share, 0.6
    # The mask-last rows' windows are uniform over all W windows (not only the first M - W).
    counts = np.bincount(rows["instance"][is_last] - w, minlength=w)
    assert len(counts) == w
    chi2 = ((counts - is_last.sum() / w) ** 2 / (is_last.sum() / w)).sum()
    assert chi2 < stats.chi2.ppf(1 - 1e-6, w - 1)


# ---- Determinism, devices and processes ----------------------------------------------------


def _small():
    corpus = random_corpus(np.arange(40) % 15 + 3, num_items=50, seed=2)
    config = InputConfig(max_len=10, mask_prob=0.3, max_predictions=4, sliding_step=3)
    return corpus, leave_one_out(corpus, "standard"), config


def _assert_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def test_deterministic_in_seed_and_step():
    corpus, split, config = _small()
    mesh = sharding_lib.make_mesh()
    a = DeviceInput(corpus, split, config, 32, mesh)
    b = DeviceInput(corpus, split, config, 32, mesh)  # a new object: nothing cached
    _assert_equal(a.batch(5), a.batch(5))
    _assert_equal(a.batch(5), b.batch(5))
    assert not np.array_equal(a.batch(5)["ids"], a.batch(6)["ids"])
    other = DeviceInput(corpus, split, InputConfig(**{**vars(config), "seed": 1}), 32, mesh)
    assert not np.array_equal(a.batch(5)["ids"], other.batch(5)["ids"])
    # The global batch is split over the data axis, as the train step expects.
    batch = a.batch(0)
    for key, value in batch.items():
        assert value.sharding == sharding_lib.data_sharded(mesh), key
    assert batch["ids"].shape == (32, 10) and batch["weights"].shape == (32, 4)
    # The rows of a batch do not depend on its size: row r is drawn from (seed, step, r).
    _assert_equal(
        jax.tree.map(lambda x: x[:16], jax.device_get(a.batch(3))),
        jax.device_get(DeviceInput(corpus, split, config, 16, mesh).batch(3)),
    )


@pytest.fixture(scope="module")
def trainer():
    """A tiny model's train step on 8 devices and its initial state on the host, shared so that
    the step and the initialisation compile once for the tests below."""
    corpus, split, config = _small()
    model = small_model(
        corpus.vocab_size, config.max_len, hidden_dropout=0.1, attention_dropout=0.1
    )
    schedule = optimizer.make_schedule(1e-2, 0, 100)
    tx = optimizer.make_optimizer(schedule)
    train_step = train_step_lib.make_train_step(model, tx, schedule)
    mesh = sharding_lib.make_mesh()
    state = train_step_lib.create_train_state(
        model, tx, mesh, max_predictions=config.max_predictions, seed=0
    )
    initial = jax.device_get(state)  # the state is donated by the steps below
    return {
        "data": (corpus, split, config),
        "train_step": train_step,
        "mesh": mesh,
        "step": train_step_lib.jit_train_step(train_step, state, mesh),
        "initial": initial,
    }


def _on(mesh, host_state):
    """A host copy of the state, replicated on `mesh` (a restore from an in-memory checkpoint)."""
    return jax.device_put(host_state, sharding_lib.replicated(mesh))


@pytest.mark.slow
def test_stop_and_resume_gives_bit_identical_parameters(trainer):
    corpus, split, config = trainer["data"]
    mesh, step = trainer["mesh"], trainer["step"]
    num_steps = 6

    # Uninterrupted: the batch of step s is source.batch(s), beside the jitted step.
    source = DeviceInput(corpus, split, config, 32, mesh)
    state = _on(mesh, trainer["initial"])
    for s in range(num_steps):
        state, _ = step(state, source.batch(s))
    uninterrupted = jax.device_get(state.params)

    # Half, a saved copy of the state on the host, then a new input and the rest from it.
    state = _on(mesh, trainer["initial"])
    for s in range(num_steps // 2):
        state, _ = step(state, source.batch(s))
    saved = jax.device_get(state)
    del state, source
    state = _on(mesh, saved)
    source = DeviceInput(corpus, split, config, 32, mesh)
    for s in range(int(state.step), num_steps):
        state, _ = step(state, source.batch(s))
    assert int(state.step) == num_steps
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), uninterrupted)


@pytest.mark.slow
def test_8_devices_give_the_batches_and_loss_of_1_device_also_fused(trainer):
    corpus, split, config = trainer["data"]
    mesh8, mesh1 = trainer["mesh"], sharding_lib.make_mesh(1)
    source8 = DeviceInput(corpus, split, config, 32, mesh8)
    source1 = DeviceInput(corpus, split, config, 32, mesh1)
    for s in (0, 7):
        _assert_equal(jax.device_get(source8.batch(s)), jax.device_get(source1.batch(s)))

    # 8 devices, batch beside the step; 1 device, batch drawn inside the step (fused): the same
    # two steps, so the same losses and parameters up to the order of float reductions.
    state8 = _on(mesh8, trainer["initial"])
    state1 = _on(mesh1, trainer["initial"])
    fused1 = source1.jit_fused_step(trainer["train_step"], state1)
    for s in range(2):
        state8, metrics8 = trainer["step"](state8, source8.batch(s))
        state1, metrics1 = fused1(state1)
        np.testing.assert_allclose(
            metrics8["loss_sum"] / metrics8["weight_sum"],
            metrics1["loss_sum"] / metrics1["weight_sum"],
            rtol=1e-5,
        )
        assert float(metrics8["weight_sum"]) == float(metrics1["weight_sum"])
    assert int(state1.step) == 2
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        jax.device_get(state8.params),
        jax.device_get(state1.params),
    )


def test_importable_and_usable_without_tensorflow():
    code = """
import sys
sys.modules["tensorflow"] = None  # `import tensorflow` now fails
import numpy as np
from bert4rec_jax import device_input, input_pipeline, sharding
from bert4rec_jax.datasets.corpus import corpus_from_sequences, leave_one_out
corpus = corpus_from_sequences("t", np.arange(3), np.array([0, 5, 9, 15]), np.arange(15))
config = input_pipeline.InputConfig(max_len=4, mask_prob=0.5, max_predictions=2, pipeline="device")
source = device_input.DeviceInput(corpus, leave_one_out(corpus), config, 8, sharding.make_mesh())
assert source.batch(0)["ids"].shape == (8, 4)
assert sys.modules["tensorflow"] is None
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


_TWO_PROCESSES = """
import sys
import jax
import numpy as np
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from bert4rec_jax import sharding
from bert4rec_jax.device_input import DeviceInput
sys.path.insert(0, "tests")
from device_input_test import _small
corpus, split, config = _small()
batch = DeviceInput(corpus, split, config, 32, sharding.make_mesh()).batch_with_instances(9)
rows = {}  # this process's rows: {first global row: {key: values}}
for key, value in batch.items():
    for shard in value.addressable_shards:
        rows.setdefault(shard.index[0].start, {})[key] = np.asarray(shard.data)
np.save(sys.argv[3], rows, allow_pickle=True)
"""


@pytest.mark.slow
def test_two_processes_draw_their_own_rows_of_the_same_global_batch(tmp_path):
    address = f"localhost:{free_port()}"
    env = device_env(2)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _TWO_PROCESSES, address, str(p), str(tmp_path / f"{p}.npy")],
            cwd=root,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(2)
    ]
    for child in children:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-3000:]

    # One process of 8 devices draws the same global batch; each of the two processes (2 devices
    # each, so 4 in all) held its own quarter-batches of it, and together they hold all of it.
    corpus, split, config = _small()
    want = jax.device_get(
        DeviceInput(corpus, split, config, 32, sharding_lib.make_mesh()).batch_with_instances(9)
    )
    starts = []
    for p in range(2):
        rows = np.load(tmp_path / f"{p}.npy", allow_pickle=True).item()
        for start, shard in rows.items():
            starts.append(start)
            _assert_equal(shard, {k: v[start : start + 8] for k, v in want.items()})
    assert sorted(starts) == [0, 8, 16, 24]


def test_errors():
    corpus, split, config = _small()
    with pytest.raises(ValueError, match="batch_size=12 must be a positive multiple of the 8"):
        DeviceInput(corpus, split, config, 12, sharding_lib.make_mesh())
    with pytest.raises(ValueError, match=r"input\.pipeline='gpu' must be one of"):
        InputConfig(pipeline="gpu")
    from configs import default

    c = default.get_config()
    assert RunConfig.from_config_dict(c).input.pipeline == c.input.pipeline == "tf.data"
    c.input.pipeline = "device"
    assert RunConfig.from_config_dict(c).input.pipeline == "device"


# ---- Host batches prefetched to the devices ------------------------------------------------


def test_prefetch_to_device_keeps_order_and_values():
    corpus, split, config = _small()
    mesh = sharding_lib.make_mesh()
    want = list(itertools.islice(input_pipeline.train_batches(corpus, split, config, 32), 5))
    pulled = []

    def source():
        for batch in itertools.islice(input_pipeline.train_batches(corpus, split, config, 32), 5):
            pulled.append(1)
            yield batch

    prefetched = sharding_lib.prefetch_to_device(source(), mesh, size=2)
    got = []
    for k, batch in enumerate(prefetched):
        # When batch k is handed out, batches k + 1 and k + 2 are already on their way.
        assert len(pulled) == min(k + 3, 5)
        for key, value in batch.items():
            assert value.sharding == sharding_lib.data_sharded(mesh), key
        got.append(jax.device_get(batch))
    assert len(got) == 5
    for a, b in zip(got, want, strict=True):
        _assert_equal(a, b)
    with pytest.raises(ValueError, match="prefetch size=0"):
        sharding_lib.prefetch_to_device(iter(want), mesh, size=0)


# ---- Length buckets ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["mask", "bert"])
def test_bucketed_rows_are_their_instances_unbucketed_rows_cut_to_the_bucket(mode):
    corpus, split, plain = _small()
    plain = InputConfig(**{**vars(plain), "mask_replacement": mode, "dupe_factor": 2})
    config = InputConfig(**{**vars(plain), "buckets": (3, 6)})
    mesh = sharding_lib.make_mesh()
    flat = _draw(DeviceInput(corpus, split, plain, 64, mesh), range(40))
    by_instance = {int(i): r for r, i in enumerate(flat["instance"])}
    source = DeviceInput(corpus, split, config, 32, mesh)
    windows = TrainingInstances(corpus, split, plain).windows
    masked = len(windows) * plain.copies
    compared, buckets = 0, set()
    for s in range(30):
        bucket = source.bucket(s)
        buckets.add(bucket)
        rows = jax.device_get(source.batch_with_instances(s))
        n, p = config.bucket_shape(bucket)
        assert rows["ids"].shape == (32, n) and rows["positions"].shape == (32, p)
        instance = rows["instance"].astype(np.int64)
        window = np.where(instance >= masked, instance - masked, instance % len(windows))
        # Every row's window belongs to the step's bucket (no mixed batches here).
        np.testing.assert_array_equal(config.bucket_of(windows.lengths[window]), bucket)
        padded = pad_rows(rows, plain.max_len, plain.max_predictions)
        _check_rules(corpus, split, plain, padded)
        for r, i in enumerate(instance):
            if int(i) in by_instance:  # the same fixed mask as without buckets
                want = {k: v[by_instance[int(i)]] for k, v in flat.items()}
                _assert_equal({k: v[r] for k, v in padded.items()}, want)
                compared += 1
    assert buckets == {0, 1, 2} and compared >= 300


def test_bucketed_rows_keep_the_distribution_of_instances():
    corpus, split, plain = _small()
    config = InputConfig(**{**vars(plain), "buckets": (3, 6)})
    source = DeviceInput(corpus, split, config, 32, sharding_lib.make_mesh())
    windows = TrainingInstances(corpus, split, plain).windows
    # A step's bucket has the probability of its share of the windows.
    steps_ = 4000
    drawn = np.bincount([source.bucket(s) for s in range(steps_)], minlength=3)
    share = np.bincount(config.bucket_of(windows.lengths), minlength=3) / len(windows)
    assert _within_binomial(drawn, steps_, share).all(), (drawn, share)
    # Within the steps, every instance is equally likely: windows uniform, mask-last 1 / (C + 1).
    instance = np.concatenate(
        [jax.device_get(source.batch_with_instances(s)["instance"]) for s in range(300)]
    ).astype(np.int64)
    masked = len(windows) * config.copies
    assert _within_binomial((instance >= masked).sum(), len(instance), 1 / (config.copies + 1))
    window = np.where(instance >= masked, instance - masked, instance % len(windows))
    counts = np.bincount(window, minlength=len(windows))
    # Rows of a step share its bucket, so a window's count per step is 0 (another bucket, with
    # probability 1 - q) or Binomial(32, 1 / W_k) (q = W_k / W): mean 32 / W, variance below.
    q = share[config.bucket_of(windows.lengths)]  # [W]
    per_row = 1 / (q * len(windows))  # 1 / W_k
    variance = q * (32 * per_row * (1 - per_row) + (32 * per_row) ** 2) - (32 / len(windows)) ** 2
    deviation = np.abs(counts - 300 * 32 / len(windows))
    assert (deviation <= Z_BOUND * np.sqrt(300 * variance)).all()


@pytest.mark.slow
def test_bucketed_steps_resume_bit_identically_and_8_devices_equal_1(trainer):
    corpus, split, plain = trainer["data"]
    config = InputConfig(**{**vars(plain), "buckets": (3, 6)})
    mesh8, mesh1, step = trainer["mesh"], sharding_lib.make_mesh(1), trainer["step"]
    num_steps = 6
    source8 = DeviceInput(corpus, split, config, 32, mesh8)
    assert len({source8.bucket(s) for s in range(num_steps)}) >= 2  # several shapes

    # 8 devices, batch beside the step, uninterrupted.
    state8 = _on(mesh8, trainer["initial"])
    losses8 = []
    for s in range(num_steps):
        state8, metrics = step(state8, source8.batch(s))
        losses8.append(float(metrics["loss_sum"] / metrics["weight_sum"]))
    uninterrupted = jax.device_get(state8.params)

    # Stopped after 3 steps, resumed from a host copy by a new source: bit-identical.
    state = _on(mesh8, trainer["initial"])
    for s in range(num_steps // 2):
        state, _ = step(state, source8.batch(s))
    saved = jax.device_get(state)
    state = _on(mesh8, saved)
    source = DeviceInput(corpus, split, config, 32, mesh8)
    for s in range(int(state.step), num_steps):
        state, _ = step(state, source.batch(s))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), uninterrupted)

    # 1 device, the batch drawn inside the step (fused), its bucket picked by the host's count.
    state1 = _on(mesh1, trainer["initial"])
    fused = DeviceInput(corpus, split, config, 32, mesh1).jit_fused_step(
        trainer["train_step"], state1
    )
    losses1 = []
    for _ in range(num_steps):
        state1, metrics = fused(state1)
        losses1.append(float(metrics["loss_sum"] / metrics["weight_sum"]))
    assert int(state1.step) == num_steps
    np.testing.assert_allclose(losses1, losses8, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        uninterrupted,
        jax.device_get(state1.params),
    )
