"""Tests of the training input pipeline: windows, cloze masks, order, resume, sharding, leakage."""

import itertools

import numpy as np
import pytest
from helpers import pad_rows, random_corpus

from bert4rec_jax import cloze, input_pipeline
from bert4rec_jax.config import RunConfig
from bert4rec_jax.datasets.corpus import Corpus, corpus_from_sequences, leave_one_out
from bert4rec_jax.input_pipeline import InputConfig, TrainingInstances


def _read_beauty(path) -> Corpus:
    pairs = np.array(path.read_bytes().split(), dtype=np.int64).reshape(-1, 2)  # [n, (user, item)]
    users = pairs[:, 0]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    offsets = np.r_[starts, len(users)]
    return corpus_from_sequences("beauty", users[starts], offsets, pairs[:, 1])


def _reference_windows(seq: list, max_len: int, step: int) -> list:
    """The original generator's windows, written as directly as possible."""
    if len(seq) <= max_len:
        return [seq]
    begins = list(range(len(seq) - max_len, 0, -step)) + [0]
    return [seq[i : i + max_len] for i in begins[::-1]]


def _take(iterator, n: int) -> list:
    return list(itertools.islice(iterator, n))


def _assert_batches_equal(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ---- Windows -------------------------------------------------------------------------------


def test_beauty_paper_recipe_counts(shared_data):
    corpus = _read_beauty(shared_data / "beauty.txt")
    assert (corpus.num_users, corpus.num_items, corpus.num_interactions) == (40226, 54542, 353962)
    split = leave_one_out(corpus, "paper")
    config = InputConfig(
        max_len=50, mask_prob=0.6, max_predictions=30, sliding_step=5, dupe_factor=10
    )
    windows = cloze.make_windows(corpus, split, 50, 5)
    assert len(windows) == 41738
    assert cloze.num_instances(corpus, split, config) == 459118
    assert input_pipeline.steps_per_epoch(corpus, split, config, 256) == 459118 // 256

    # Every window equals the original generator's, in the same order.
    expected = []
    for u in range(corpus.num_users):
        seq = split.train_sequence(corpus, u).tolist()
        expected += [(u, w) for w in _reference_windows(seq, 50, 5)]
    got = [
        (u, corpus.items[s : s + n].tolist())
        for u, s, n in zip(windows.users, windows.starts, windows.lengths, strict=True)
    ]
    assert got == expected


def test_windows_small():
    # Users of length 12, 5, 0 (no window), 1 and 3; standard split holds out 2 items of n >= 3.
    corpus = random_corpus([14, 7, 0, 1, 3])
    split = leave_one_out(corpus, "standard")
    windows = cloze.make_windows(corpus, split, max_len=5, sliding_step=3)
    # 12 items: starts range(7, 0, -3) + [0] -> 0, 1, 4, 7.
    np.testing.assert_array_equal(windows.users, [0, 0, 0, 0, 1, 3, 4])
    np.testing.assert_array_equal(
        windows.starts - corpus.offsets[windows.users], [0, 1, 4, 7, 0, 0, 0]
    )
    np.testing.assert_array_equal(windows.lengths, [5, 5, 5, 5, 5, 1, 1])


# ---- Masks ---------------------------------------------------------------------------------


def test_round_half_away_from_zero():
    got = cloze.round_half_away(np.array([0.0, 0.5, 1.5, 2.5, 2.4999, 0.49999999999999994]))
    np.testing.assert_array_equal(got, [0, 1, 2, 3, 2, 0])
    config = InputConfig(max_len=50, mask_prob=0.5, max_predictions=4)
    np.testing.assert_array_equal(
        cloze.num_masked(np.array([1, 2, 3, 5, 7, 50]), config), [1, 1, 2, 3, 4, 4]
    )


def _check_masked_rows(instances: TrainingInstances, rows: dict, indices: np.ndarray) -> None:
    """Checks the cloze rules on rows built from instance numbers `indices`."""
    corpus, config = instances.corpus, instances.config
    num_windows, masked_rows = instances.num_windows, instances.num_masked_rows
    is_last = indices >= masked_rows
    window = np.where(is_last, indices - masked_rows, indices % num_windows)
    lengths = instances.windows.lengths[window].astype(np.int64)
    starts = instances.windows.starts[window]
    n, pmax = config.max_len, config.max_predictions
    ids, positions, labels, weights = (rows[k] for k in ("ids", "positions", "labels", "weights"))
    assert ids.shape == (len(indices), n) and ids.dtype == np.int32
    assert positions.shape == labels.shape == weights.shape == (len(indices), pmax)
    assert positions.dtype == labels.dtype == np.int32 and weights.dtype == np.float32

    k = weights.sum(axis=1).astype(np.int64)
    expected_k = np.where(is_last, 1, cloze.num_masked(lengths, config))
    np.testing.assert_array_equal(k, expected_k)
    slot = np.arange(pmax)
    real = slot < k[:, None]
    np.testing.assert_array_equal(weights, real.astype(np.float32))  # real slots come first
    # Padding slots: position 0, label 0; real slots: strictly increasing, never padding.
    assert not positions[~real].any() and not labels[~real].any()
    assert (np.where(real, positions, -1) < lengths[:, None]).all()
    increasing = np.diff(positions, axis=1) > 0
    assert (increasing | ~real[:, 1:]).all()
    # Labels are the window's original items.
    original = corpus.items[starts[:, None] + np.minimum(np.arange(n), lengths[:, None] - 1)]
    original = np.where(np.arange(n) < lengths[:, None], original, 0)  # [R, N]
    np.testing.assert_array_equal(labels, np.take_along_axis(original, positions, 1) * real)
    # The mask-last copy masks exactly the last item.
    np.testing.assert_array_equal(positions[is_last, 0], lengths[is_last] - 1)
    # Padding after the items.
    assert (ids[np.arange(n) >= lengths[:, None]] == 0).all()
    masked = np.zeros_like(ids, dtype=bool)
    r, c = np.nonzero(real)
    masked[r, positions[r, c]] = True  # not put_along_axis: padding slots also point at 0
    np.testing.assert_array_equal(ids[~masked], original[~masked])
    return masked, original


def test_mask_mode_rules():
    corpus = random_corpus(np.arange(1, 61) % 37 + 1, num_items=80)
    config = InputConfig(
        max_len=20, mask_prob=0.3, max_predictions=5, sliding_step=4, dupe_factor=3, seed=7
    )
    instances = TrainingInstances(corpus, leave_one_out(corpus, "standard"), config)
    assert instances.num_instances == instances.num_windows * 4
    indices = np.arange(instances.num_instances)
    rows = instances.materialize(indices, epoch=0)
    masked, _ = _check_masked_rows(instances, rows, indices)
    assert (rows["ids"][masked] == corpus.mask_id).all()
    # Fixed masks: the same instance has the same mask in every epoch; copies differ.
    again = instances.materialize(indices, epoch=5)
    _assert_batches_equal([rows], [again])
    w = instances.num_windows
    assert not np.array_equal(rows["positions"][:w], rows["positions"][w : 2 * w])


def test_masks_uniform_over_positions():
    # 400 users, one window of 10 items each; k = 3: every position masked with rate 0.3.
    corpus = random_corpus(np.full(400, 12), num_items=50)
    config = InputConfig(max_len=10, mask_prob=0.3, max_predictions=10, dupe_factor=10)
    instances = TrainingInstances(corpus, leave_one_out(corpus, "standard"), config)
    indices = np.arange(instances.num_masked_rows)
    masked = instances.materialize(indices, 0)["ids"] == corpus.mask_id  # [R, N]
    np.testing.assert_allclose(masked.mean(axis=0), 0.3, atol=0.02)


def test_bert_mode_proportions():
    corpus = random_corpus(np.full(500, 52), num_items=1000)
    config = InputConfig(
        max_len=50, mask_prob=0.5, max_predictions=25, dupe_factor=4, mask_replacement="bert"
    )
    instances = TrainingInstances(corpus, leave_one_out(corpus, "standard"), config)
    indices = np.arange(instances.num_instances)
    rows = instances.materialize(indices, 0)
    masked, original = _check_masked_rows(instances, rows, indices)
    last = indices >= instances.num_masked_rows
    ids = rows["ids"]
    assert (ids[last][masked[last]] == corpus.mask_id).all()  # mask-last: always [MASK]
    sel = masked & ~last[:, None]
    total = sel.sum()
    assert total == 500 * 4 * 25
    is_mask = (ids[sel] == corpus.mask_id).mean()
    is_kept = (ids[sel] == original[sel]).mean()
    is_random = 1 - is_mask - is_kept
    assert abs(is_mask - 0.8) < 0.01
    assert abs(is_kept - 0.1) < 0.01
    assert abs(is_random - 0.1) < 0.01
    random_items = ids[sel][(ids[sel] != corpus.mask_id) & (ids[sel] != original[sel])]
    assert random_items.min() >= 1 and random_items.max() <= corpus.num_items


def test_fresh_masks():
    corpus = random_corpus(np.full(50, 15), num_items=40)
    config = InputConfig(max_len=10, mask_prob=0.4, max_predictions=4, fresh_masks=True)
    split = leave_one_out(corpus, "standard")
    instances = TrainingInstances(corpus, split, config)
    assert instances.num_instances == cloze.num_instances(corpus, split, config)
    assert instances.num_instances == 2 * instances.num_windows  # one copy + mask-last
    indices = np.arange(instances.num_instances)
    e0, e1 = instances.materialize(indices, 0), instances.materialize(indices, 1)
    _check_masked_rows(instances, e0, indices)
    _check_masked_rows(instances, e1, indices)
    assert not np.array_equal(e0["positions"], e1["positions"])
    # Deterministic in (seed, epoch): a new object draws the same masks.
    _assert_batches_equal([e1], [TrainingInstances(corpus, split, config).materialize(indices, 1)])


# ---- Order, resume and processes -----------------------------------------------------------


def _small():
    corpus = random_corpus(np.arange(30) % 9 + 3, num_items=60, seed=3)
    config = InputConfig(max_len=6, mask_prob=0.3, max_predictions=3, sliding_step=2, dupe_factor=2)
    return corpus, leave_one_out(corpus, "standard"), config


def test_order_deterministic_and_per_epoch():
    corpus, split, config = _small()
    a, b = TrainingInstances(corpus, split, config), TrainingInstances(corpus, split, config)
    np.testing.assert_array_equal(a.permutation(3), b.permutation(3))
    np.testing.assert_array_equal(np.sort(a.permutation(0)), np.arange(a.num_instances))
    assert not np.array_equal(a.permutation(0), a.permutation(1))
    other = TrainingInstances(corpus, split, InputConfig(**{**vars(config), "seed": 1}))
    assert not np.array_equal(a.permutation(0), other.permutation(0))
    _assert_batches_equal([a.epoch_arrays(2)], [b.epoch_arrays(2)])


@pytest.mark.parametrize("chunk_rows", [64, 1 << 14])
def test_batches_and_resume(monkeypatch, chunk_rows):
    # Small chunks (2 batches) exercise chunk boundaries inside an epoch.
    monkeypatch.setattr(input_pipeline, "_CHUNK_ROWS", chunk_rows)
    corpus, split, config = _small()
    g = 32
    instances = TrainingInstances(corpus, split, config)
    spe = instances.steps_per_epoch(g)
    assert spe == instances.num_instances // g and spe >= 3
    full = _take(input_pipeline.train_batches(corpus, split, config, g), 3 * spe)
    # Each batch is the step's slice of its epoch's permutation.
    for step in (0, 1, spe - 1, spe, 2 * spe + 1):
        epoch, b = divmod(step, spe)
        want = instances.materialize(
            instances.local_indices(epoch, g, first_batch=b, num_batches=1)[0], epoch
        )
        _assert_batches_equal([full[step]], [want])
    assert not np.array_equal(full[0]["ids"], full[spe]["ids"])  # epochs differ in order
    for start in (1, spe - 2, spe, 2 * spe - 1):  # the second and last cross an epoch boundary
        resumed = _take(
            input_pipeline.train_batches(corpus, split, config, g, start_step=start),
            min(5, 3 * spe - start),
        )
        _assert_batches_equal(resumed, full[start : start + len(resumed)])


def test_process_slices_concatenate_to_the_global_batch():
    corpus, split, config = _small()
    g, start, n = 32, 4, 12
    single = _take(input_pipeline.train_batches(corpus, split, config, g, start_step=start), n)
    parts = [
        _take(
            input_pipeline.train_batches(
                corpus, split, config, g, start_step=start, process_index=p, process_count=2
            ),
            n,
        )
        for p in range(2)
    ]
    assert TrainingInstances(corpus, split, config).steps_per_epoch(g) < start + n  # crosses
    for k in range(n):
        assert parts[0][k]["ids"].shape == (g // 2, config.max_len)
        joined = {key: np.concatenate([parts[0][k][key], parts[1][k][key]]) for key in single[k]}
        _assert_batches_equal([joined], [single[k]])


# ---- No leakage ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["standard", "paper"])
def test_held_out_items_never_train(mode):
    # Every interaction has its own item, so an item names its user and its place in time.
    corpus = random_corpus(np.arange(200) % 23 + 1)
    split = leave_one_out(corpus, mode)
    config = InputConfig(max_len=8, mask_prob=0.4, max_predictions=4, sliding_step=3, dupe_factor=2)
    instances = TrainingInstances(corpus, split, config)

    # Traced to users: every item of every row lies in that user's training sequence.
    rows = instances.epoch_arrays(0, with_users=True)
    place = np.empty(corpus.num_items + 2, dtype=np.int64)
    place[corpus.items] = np.arange(corpus.num_interactions)
    users = np.broadcast_to(rows["users"][:, None] - 1, rows["ids"].shape)  # user rows -> users
    for key in ("ids", "labels"):
        items = rows[key]
        real = (items != 0) & (items != corpus.mask_id)
        user = users[:, : items.shape[1]][real]
        where = place[items[real]]
        assert (where >= corpus.offsets[user]).all() and (where < split.train_ends[user]).all()

    # Through the public iterator, a full epoch: no held-out target anywhere.
    g = 64
    spe = instances.steps_per_epoch(g)
    seen = set()
    for batch in _take(input_pipeline.train_batches(corpus, split, config, g), spe):
        seen.update(np.unique(batch["ids"]).tolist())
        seen.update(np.unique(batch["labels"]).tolist())
    assert not seen & set(split.test_targets.tolist())
    if mode == "standard":
        assert not seen & set(split.valid_targets.tolist())
    else:  # the paper merges validation items into training: they must show up
        assert seen & set(split.valid_targets.tolist())


# ---- Mask-last weight and share --------------------------------------------------------------


def _last_rows_windows(instances: TrainingInstances, rows: dict) -> np.ndarray:
    """int64 [R]: the windows of mask-last rows, from their first item (every interaction its
    own item, so an item names its place in `corpus.items`)."""
    corpus = instances.corpus
    place = np.empty(corpus.num_items + 2, dtype=np.int64)
    place[corpus.items] = np.arange(corpus.num_interactions)
    ids = rows["ids"]
    # Only a one-item window has its first item masked: then it is the row's first label.
    first = np.where(ids[:, 0] == corpus.mask_id, rows["labels"][:, 0], ids[:, 0])
    windows = np.searchsorted(instances.windows.starts, place[first])
    np.testing.assert_array_equal(instances.windows.starts[windows], place[first])
    return windows


def test_default_mask_last_rows_weigh_one_and_keep_their_windows():
    corpus = random_corpus(np.arange(30) % 9 + 3, seed=3)  # every interaction its own item
    split = leave_one_out(corpus, "standard")
    config = InputConfig(max_len=6, mask_prob=0.3, max_predictions=3, sliding_step=2, dupe_factor=2)
    assert config.mask_last_weight == 1.0 and config.mask_last_share == 0.0
    instances = TrainingInstances(corpus, split, config)
    w, masked_rows = instances.num_windows, instances.num_masked_rows
    assert instances.num_instances == w * 3  # two masked copies + one mask-last copy
    idx = np.arange(instances.num_instances)
    for epoch in (0, 1, 2):
        rows = instances.materialize(idx, epoch)
        k = cloze.num_masked(instances.windows.lengths[idx % w], config)
        k = np.where(idx >= masked_rows, 1, k)
        # Every real prediction weighs exactly 1, padding 0.
        np.testing.assert_array_equal(
            rows["weights"], (np.arange(3) < k[:, None]).astype(np.float32)
        )
        # Mask-last instance W * C + w is window w in every epoch (no rotation by default).
        last = {key: value[masked_rows:] for key, value in rows.items()}
        np.testing.assert_array_equal(_last_rows_windows(instances, last), np.arange(w))


def test_mask_last_weight_weighs_exactly_the_mask_last_predictions():
    import jax.numpy as jnp

    from bert4rec_jax import losses

    corpus, split, config = _small()
    base = TrainingInstances(corpus, split, config)
    weighted = TrainingInstances(
        corpus, split, InputConfig(**{**vars(config), "mask_last_weight": 2.0})
    )
    a, b = base.epoch_arrays(1), weighted.epoch_arrays(1)
    for key in ("ids", "positions", "labels"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    is_last = base.permutation(1) >= base.num_masked_rows  # [I]
    assert is_last.sum() == base.num_windows
    np.testing.assert_array_equal(b["weights"], a["weights"] * np.where(is_last, 2.0, 1.0)[:, None])
    assert set(np.unique(b["weights"][is_last])) == {0.0, 2.0}

    # The loss is the weighted mean over predictions: sum(w * nll) / sum(w).
    rng = np.random.default_rng(0)
    vocab, hidden = corpus.mask_id + 1, 8
    h = rng.normal(size=(*b["labels"].shape, hidden)).astype(np.float32)  # [I, P, H]
    table = rng.normal(size=(vocab, hidden)).astype(np.float32)  # [V, H]
    bias = np.zeros(vocab, np.float32)
    logits = h.astype(np.float64) @ table.T.astype(np.float64)  # [I, P, V]
    logits -= logits.max(-1, keepdims=True)
    nll = (
        np.log(np.exp(logits).sum(-1))
        - np.take_along_axis(logits, b["labels"][..., None], -1)[..., 0]
    )
    means = {}
    for name, rows in (("base", a), ("weighted", b)):
        sums = losses.cloze_loss(
            losses.LossConfig(type="full"),
            jnp.asarray(h),
            table,
            bias,
            rows["labels"],
            rows["weights"],
        )
        means[name] = float(sums["loss_sum"] / sums["weight_sum"])
        want = (rows["weights"] * nll).sum() / rows["weights"].sum()
        np.testing.assert_allclose(means[name], want, rtol=1e-5)
        # Accuracy stays unweighted: the same prediction count either way.
        assert float(sums["prediction_count"]) == (a["weights"] > 0).sum()
    assert means["base"] != means["weighted"]


@pytest.mark.parametrize("share, fresh", [(0.25, False), (0.05, False), (0.6, True)])
def test_mask_last_share_per_epoch(share, fresh):
    corpus = random_corpus(np.arange(30) % 9 + 3, seed=3)  # every interaction its own item
    split = leave_one_out(corpus, "standard")
    config = InputConfig(
        max_len=6,
        mask_prob=0.3,
        max_predictions=3,
        sliding_step=2,
        dupe_factor=4,
        fresh_masks=fresh,
        mask_last_share=share,
        mask_last_weight=3.0,  # marks the mask-last rows in the batches
    )
    instances = TrainingInstances(corpus, split, config)
    w, c = instances.num_windows, config.copies
    m = config.num_mask_last(w)
    assert m != w and instances.num_instances == w * c + m
    assert abs(m / instances.num_instances - share) <= 1 / instances.num_instances
    epochs = 3
    counts = np.zeros(w, np.int64)  # mask-last rows per window over the epochs
    for epoch in range(epochs):
        rows = instances.epoch_arrays(epoch)
        is_last = (rows["weights"] == 3.0).any(axis=1)
        assert is_last.sum() == m  # exactly M mask-last instances in every epoch
        np.testing.assert_array_equal(
            is_last, instances.permutation(epoch) >= instances.num_masked_rows
        )
        # A mask-last row masks its last item only.
        np.testing.assert_array_equal(rows["weights"][is_last].sum(axis=1), 3.0)
        last = {key: value[is_last] for key, value in rows.items()}
        counts += np.bincount(_last_rows_windows(instances, last), minlength=w)
    # Rotated by M per epoch: over the epochs every window is mask-last equally often (+-1).
    assert counts.sum() == epochs * m and counts.max() - counts.min() <= 1

    # The public iterator uses the same instances, with resume.
    g = 16
    full = _take(input_pipeline.train_batches(corpus, split, config, g), 6)
    _assert_batches_equal(
        _take(input_pipeline.train_batches(corpus, split, config, g, start_step=3), 3), full[3:]
    )
    assert instances.steps_per_epoch(g) == instances.num_instances // g


# ---- Config --------------------------------------------------------------------------------


def test_from_config():
    from configs import default

    c = default.get_config()
    config = RunConfig.from_config_dict(c).input
    assert config.max_len == c.model.max_len and config.seed == c.seed
    assert config.mask_prob == c.input.mask_prob and config.dupe_factor == c.input.dupe_factor
    assert config.mask_replacement == c.input.mask_replacement
    assert (config.mask_last_weight, config.mask_last_share) == (1.0, 0.0)  # the paper's
    c.input.mask_last_weight, c.input.mask_last_share = 2.0, 0.25
    config = RunConfig.from_config_dict(c).input
    assert (config.mask_last_weight, config.mask_last_share) == (2.0, 0.25)


@pytest.mark.parametrize(
    "override, field",
    [
        ({"mask_prob": 0.0}, "input.mask_prob"),
        ({"mask_prob": 1.5}, "input.mask_prob"),
        ({"max_predictions": 0}, "input.max_predictions"),
        ({"max_predictions": 51}, "input.max_predictions"),
        ({"sliding_step": 0}, "input.sliding_step"),
        ({"dupe_factor": 0}, "input.dupe_factor"),
        ({"mask_replacement": "random"}, "input.mask_replacement"),
        ({"max_len": 0}, "model.max_len"),
        ({"mask_last_weight": 0.0}, "input.mask_last_weight"),
        ({"mask_last_weight": -1.0}, "input.mask_last_weight"),
        ({"mask_last_weight": float("nan")}, "input.mask_last_weight"),
        ({"mask_last_weight": 2.0, "mask_last_copy": False}, "input.mask_last_weight"),
        ({"mask_last_share": 1.0}, "input.mask_last_share"),
        ({"mask_last_share": -0.1}, "input.mask_last_share"),
        ({"mask_last_share": 0.2, "mask_last_copy": False}, "input.mask_last_share"),
    ],
)
def test_config_errors_name_the_field(override, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        InputConfig(**{"max_len": 50, **override})


def test_batch_size_errors():
    corpus, split, config = _small()
    instances = TrainingInstances(corpus, split, config)
    with pytest.raises(ValueError, match="batch_size=33 must be a positive multiple of the 2"):
        input_pipeline.train_batches(corpus, split, config, 33, process_count=2)
    with pytest.raises(ValueError, match="batch_size=.* larger than an epoch"):
        instances.steps_per_epoch(instances.num_instances + 2, process_count=2)
    with pytest.raises(ValueError, match="process_index=2"):
        instances.dataset(32, process_index=2, process_count=2)


# ---- Length buckets ------------------------------------------------------------------------


def _bucketed(**overrides):
    corpus = random_corpus(np.arange(40) % 11 + 3, num_items=60, seed=5)
    fields = dict(max_len=8, mask_prob=0.4, max_predictions=3, sliding_step=3, dupe_factor=2)
    config = InputConfig(**{**fields, **overrides})
    return corpus, leave_one_out(corpus, "standard"), config


def _row_multiset(rows: dict) -> list:
    keys = sorted(rows)
    return sorted(zip(*(map(bytes, np.ascontiguousarray(rows[k])) for k in keys), strict=True))


@pytest.mark.parametrize(
    "overrides",
    [{}, {"fresh_masks": True, "mask_replacement": "bert"}, {"mask_last_share": 0.3}],
)
def test_buckets_keep_each_epochs_instances_and_masks_and_cut_batches_to_their_bucket(overrides):
    corpus, split, plain = _bucketed(**overrides)
    config = InputConfig(**{**vars(plain), "buckets": (2, 4)})  # 8 = max_len is added
    assert config.bucket_sizes == (2, 4, 8)
    assert [config.bucket_shape(b) for b in range(3)] == [(2, 1), (4, 2), (8, 3)]
    g = 16
    flat, bucketed = (
        TrainingInstances(corpus, split, plain),
        TrainingInstances(corpus, split, config),
    )
    spe = flat.steps_per_epoch(g)
    assert bucketed.steps_per_epoch(g) == spe and spe >= 6
    batches = _take(
        input_pipeline.train_batches(corpus, split, config, g, start_step=spe), 2 * spe
    )  # epochs 1 and 2
    seen_buckets = set()
    for epoch in (1, 2):
        # The same instances: those the unbucketed epoch keeps (its remainder is dropped).
        indices = bucketed.local_indices(epoch, g)
        np.testing.assert_array_equal(
            np.sort(indices.ravel()), np.sort(flat.local_indices(epoch, g).ravel())
        )
        buckets = bucketed.batch_buckets(epoch, g)
        mixed = 0
        rows = []
        for b in range(spe):
            batch = batches[(epoch - 1) * spe + b]
            n, p = config.bucket_shape(int(buckets[b]))
            assert batch["ids"].shape == (g, n) and batch["positions"].shape == (g, p)
            lengths = bucketed.windows.lengths[bucketed.instance_windows(indices[b], epoch)]
            assert lengths.max() <= n
            want = bucketed.materialize(indices[b], epoch, bucket=int(buckets[b]))
            _assert_batches_equal([batch], [want])
            mixed += len(set(config.bucket_of(lengths))) > 1
            seen_buckets.add(int(buckets[b]))
            rows.append(pad_rows(batch, plain.max_len, plain.max_predictions))
        assert mixed <= len(config.bucket_sizes) - 1  # only at the bucket boundaries
        # The same rows, masks included, as a multiset: only the grouping changed.
        joined = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
        unbucketed = flat.materialize(flat.local_indices(epoch, g).ravel(), epoch)
        assert _row_multiset(joined) == _row_multiset(unbucketed)
    assert seen_buckets == {0, 1, 2}
    # Deterministic in (seed, epoch), and another seed orders the batches otherwise.
    again = TrainingInstances(corpus, split, config)
    np.testing.assert_array_equal(again.local_indices(1, g), bucketed.local_indices(1, g))
    other = TrainingInstances(corpus, split, InputConfig(**{**vars(config), "seed": 1}))
    assert not np.array_equal(other.local_indices(1, g), bucketed.local_indices(1, g))


def test_bucketed_batches_resume_and_split_over_processes():
    corpus, split, plain = _bucketed()
    config = InputConfig(**{**vars(plain), "buckets": (3, 8)})
    g = 16
    spe = TrainingInstances(corpus, split, config).steps_per_epoch(g)
    full = _take(input_pipeline.train_batches(corpus, split, config, g), 2 * spe + 2)
    for start in (1, spe - 1, spe + 3):
        resumed = _take(input_pipeline.train_batches(corpus, split, config, g, start_step=start), 4)
        _assert_batches_equal(resumed, full[start : start + 4])
    parts = [
        _take(
            input_pipeline.train_batches(
                corpus, split, config, g, start_step=2, process_index=p, process_count=2
            ),
            spe,
        )
        for p in range(2)
    ]
    for k in range(spe):
        joined = {key: np.concatenate([parts[0][k][key], parts[1][k][key]]) for key in full[0]}
        _assert_batches_equal([joined], [full[2 + k]])


@pytest.mark.parametrize(
    "buckets, message",
    [((4, 2), "increasing"), ((0, 8), "increasing"), ((4, 9), "increasing"), ((2.5,), "whole")],
)
def test_bucket_errors_name_the_field(buckets, message):
    with pytest.raises(ValueError, match=rf"input\.buckets=.*{message}"):
        InputConfig(max_len=8, max_predictions=3, buckets=buckets)
