"""Acceptance tests of the corpora `load_corpus` builds from the real data, and of their splits."""

import numpy as np
import pytest

from bert4rec_jax.datasets import corpus as corpus_lib
from bert4rec_jax.datasets import load_corpus, readers


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """One TFDS data dir for the session, so Beauty is prepared once."""
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="session")
def beauty(corpus_dir, shared_data):
    return load_corpus("beauty", data_dir=str(corpus_dir), manual_dir=str(shared_data))


@pytest.fixture(scope="session")
def ml100k(corpus_dir, shared_data):
    return load_corpus("ml-100k-raw", data_dir=str(corpus_dir), manual_dir=str(shared_data))


def test_beauty_statistics(beauty):
    assert beauty.name == "beauty"
    assert (beauty.num_users, beauty.num_items, beauty.num_interactions) == (
        40_226,
        54_542,
        353_962,
    )
    assert beauty.lengths.min() == 5 and beauty.lengths.max() == 293
    assert beauty.items.min() == 1 and beauty.items.max() == beauty.num_items
    assert beauty.popularity.sum() == beauty.num_interactions


def test_ml100k_statistics(ml100k):
    assert (ml100k.num_users, ml100k.num_items, ml100k.num_interactions) == (943, 1682, 100_000)
    assert ml100k.lengths.min() >= 20


def test_beauty_matches_the_file(beauty, shared_data):
    # The TFDS round trip keeps every user's order and the raw ids (users sorted by raw id).
    seqs = readers.read_paper_file(shared_data / "beauty.txt")
    assert np.array_equal(beauty.raw_user_ids, seqs.raw_user_ids)
    assert np.array_equal(beauty.offsets, seqs.offsets)
    assert np.array_equal(beauty.raw_item_ids[beauty.items], seqs.raw_items)
    # The file's first user, line for line.
    lines = (shared_data / "beauty.txt").read_text().splitlines()[:400]
    pairs = [tuple(map(int, line.split())) for line in lines]
    first = [item for user, item in pairs if user == seqs.raw_user_ids[0]]
    assert len(first) == beauty.lengths[0]
    assert beauty.raw_item_ids[beauty.sequence(0)].tolist() == first


def test_ml100k_orders_by_timestamp_then_item(ml100k, shared_data):
    table = np.loadtxt(shared_data / "ml-100k" / "u.data", dtype=np.int64)
    user = int(ml100k.raw_user_ids[0])
    rows = table[table[:, 0] == user]
    expected = rows[np.lexsort((rows[:, 1], rows[:, 3])), 1]
    assert ml100k.raw_item_ids[ml100k.sequence(0)].tolist() == expected.tolist()


def _pairs_in_training(corpus, split, users, targets):
    """bool [len(users)]: whether each (user, target) occurs in the user's training sequence."""
    starts = corpus.offsets[:-1]
    lengths = split.train_ends - starts
    train_users = np.repeat(np.arange(corpus.num_users), lengths)
    train_items = np.concatenate(
        [corpus.items[s:e] for s, e in zip(starts, split.train_ends, strict=True)]
    )
    width = corpus.vocab_size
    keys = train_users.astype(np.int64) * width + train_items
    return np.isin(users.astype(np.int64) * width + targets, keys)


@pytest.mark.parametrize("name", ["beauty", "ml100k"])
def test_split_invariants(name, request):
    corpus = request.getfixturevalue(name)
    standard = corpus_lib.leave_one_out(corpus, "standard")
    paper = corpus_lib.leave_one_out(corpus, "paper")
    for split in (standard, paper):
        assert not _pairs_in_training(corpus, split, split.eval_users, split.test_targets).any()
    # The validation target is trained on only in paper mode (where it is the last train item).
    assert not _pairs_in_training(
        corpus, standard, standard.eval_users, standard.valid_targets
    ).any()
    assert _pairs_in_training(corpus, paper, paper.eval_users, paper.valid_targets).all()
    assert np.array_equal(corpus.items[paper.train_ends[paper.eval_users] - 1], paper.valid_targets)
    assert len(standard.eval_users) == corpus.num_users  # every user has >= 5 interactions


def test_short_users_train_only(tmp_path):
    # Users of 1, 2, 3 and 5 interactions in the paper's format, through TFDS.
    manual = tmp_path / "manual"
    manual.mkdir()
    lines = ["1 10", "2 10", "2 11", "3 10", "3 11", "3 12"] + [f"4 {i}" for i in range(20, 25)]
    (manual / "beauty.txt").write_text("\n".join(lines) + "\n")
    corpus = load_corpus("beauty", data_dir=str(tmp_path / "data"), manual_dir=str(manual))
    assert corpus.lengths.tolist() == [1, 2, 3, 5]
    for mode in corpus_lib.SPLIT_MODES:
        split = corpus_lib.leave_one_out(corpus, mode)
        assert split.eval_users.tolist() == [2, 3]
        short = np.array([0, 1])
        assert np.array_equal(split.train_ends[short], corpus.offsets[short + 1])
        assert split.test_targets.tolist() == [corpus.sequence(2)[-1], corpus.sequence(3)[-1]]


def test_no_evaluable_user_is_refused():
    corpus = corpus_lib.corpus_from_sequences(
        "tiny", np.array([1, 2]), np.array([0, 2, 4]), np.array([5, 6, 5, 7])
    )
    with pytest.raises(ValueError, match="no evaluable user"):
        corpus_lib.leave_one_out(corpus)


@pytest.mark.parametrize("raw_max", [50, 10**12])  # the lookup-table path and the sorting path
def test_item_remap_keeps_raw_order_and_mapping(raw_max):
    rng = np.random.default_rng(0)
    raw = rng.choice(np.arange(raw_max - 40, raw_max), size=200)
    corpus = corpus_lib.corpus_from_sequences(
        "t", np.arange(4), np.array([0, 50, 100, 150, 200]), raw
    )
    np.testing.assert_array_equal(corpus.raw_item_ids[1:], np.unique(raw))
    np.testing.assert_array_equal(corpus.raw_item_ids[corpus.items], raw)
    assert corpus.items.min() == 1 and corpus.items.max() == corpus.num_items


def test_string_raw_ids_through_a_vocabulary():
    # Indices into a sorted vocabulary; the unused "b" gets no dense id.
    vocab = np.array(["a", "b", "c", "tt0114709"])
    corpus = corpus_lib.corpus_from_sequences(
        "s",
        np.array(["u1", "u2"]),
        np.array([0, 2, 5]),
        np.array([3, 0, 2, 2, 0]),
        item_vocab=vocab,
    )
    assert corpus.raw_item_ids.tolist() == ["", "a", "c", "tt0114709"]
    assert corpus.raw_user_ids.tolist() == ["u1", "u2"]
    assert corpus.items.tolist() == [3, 1, 2, 2, 1]
    assert corpus_lib.padding_raw_id(corpus.raw_item_ids) == ""
    ints = corpus_lib.corpus_from_sequences("i", np.array([1]), np.array([0, 2]), np.array([9, 4]))
    assert ints.raw_item_ids.tolist() == [-1, 4, 9] and ints.raw_item_ids.dtype == np.int64
    with pytest.raises(ValueError, match="raw ids must be integers or strings, got an array of"):
        corpus_lib.raw_id_array(np.array([1.5, 2.5]))
