"""Prepared corpora read back without TensorFlow, and only while their sources are unchanged."""

import os
import subprocess
import sys

import numpy as np
from helpers import SMALL_SYNTHETIC

from bert4rec_jax.datasets import corpus as corpus_lib
from bert4rec_jax.datasets import load_corpus, prepared


def assert_same_corpus(a, b):
    assert a.name == b.name
    for field in ("offsets", "items", "raw_item_ids", "raw_user_ids"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_prepared_corpus_is_found_without_tensorflow(tmp_path):
    data_dir = str(tmp_path / "data")
    assert prepared.load_prepared("synthetic", data_dir=data_dir, synthetic=SMALL_SYNTHETIC) is None
    corpus = load_corpus("synthetic", data_dir=data_dir, synthetic=SMALL_SYNTHETIC)
    assert_same_corpus(
        prepared.load_prepared("synthetic", data_dir=data_dir, synthetic=SMALL_SYNTHETIC), corpus
    )
    # Another request (other synthetic size) has no entry.
    other = dict(SMALL_SYNTHETIC, num_items=41)
    assert prepared.load_prepared("synthetic", data_dir=data_dir, synthetic=other) is None
    # In a process where TensorFlow cannot be imported at all.
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "from bert4rec_jax.datasets import prepared\n"
        f"c = prepared.load_prepared('synthetic', data_dir={data_dir!r}, "
        f"synthetic={SMALL_SYNTHETIC!r})\n"
        "print(c.num_users, c.num_items, 'tensorflow' in sys.modules and sys.modules['tensorflow'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(corpus.num_users), str(corpus.num_items), "None"]


def test_an_edited_source_file_is_not_trusted(tmp_path):
    data_dir = str(tmp_path / "data")
    path = tmp_path / "log.csv"
    rows = [f"{u},{i},{t}" for u in range(6) for t, i in enumerate(range(u, u + 6))]
    path.write_text("user_id,item_id,ts\n" + "\n".join(rows) + "\n")
    file = {"path": str(path), "timestamp_column": "ts"}
    corpus = load_corpus("file", data_dir=data_dir, file=file)
    assert_same_corpus(prepared.load_prepared("file", data_dir=data_dir, file=file), corpus)
    path.write_text(path.read_text() + "5,99,100\n")
    assert prepared.load_prepared("file", data_dir=data_dir, file=file) is None
    # load_corpus notices the edit and prepares the new content, which is found again.
    edited = load_corpus("file", data_dir=data_dir, file=file)
    assert edited.num_items == corpus.num_items + 1
    assert_same_corpus(prepared.load_prepared("file", data_dir=data_dir, file=file), edited)
    os.utime(path, (0, 0))  # same bytes, other time: not trusted without hashing again
    assert prepared.load_prepared("file", data_dir=data_dir, file=file) is None


# ---- Raw ids by their actual length -------------------------------------------------------


def test_a_long_string_id_costs_its_own_length_only(tmp_path):
    """A million-item catalogue with one 10,000-character id: the cache follows the ids' bytes
    (fixed-width unicode would have taken 1M x 40,000 bytes = 40 GB)."""
    num_items = 1_000_000
    ids = [f"https://shop.example/item/{i:07d}" for i in range(num_items)]  # 33 bytes each
    ids[123_456] = "https://shop.example/item/" + "x" * 9_974  # 10,000 characters
    vocab = corpus_lib.string_ids(sorted(ids))
    # 100,000 users of 10 items each: every item used once.
    offsets = np.arange(0, num_items + 1, 10)
    corpus = corpus_lib.corpus_from_sequences(
        "long", np.arange(len(offsets) - 1), offsets, np.arange(num_items), item_vocab=vocab
    )
    assert corpus.raw_item_ids.dtype == object
    path = tmp_path / "corpus.npz"
    prepared.write_cache(path, corpus)
    id_bytes = sum(len(s.encode()) for s in ids)
    assert path.stat().st_size < 2 * id_bytes, (path.stat().st_size, id_bytes)
    assert_same_corpus(prepared.read_cache(path), corpus)


def test_string_ids_round_trip_and_old_caches_still_load(tmp_path):
    corpus = corpus_lib.corpus_from_sequences(
        "s",
        np.array(["ü1", "u2"]),
        np.array([0, 2, 3]),
        np.array([2, 0, 1]),
        item_vocab=np.array(["a", "β" * 300, "tt0114709"]),
    )
    path = tmp_path / "new.npz"
    prepared.write_cache(path, corpus)
    with np.load(path) as z:
        assert "raw_item_ids" not in z.files and z["raw_item_ids__utf8"].dtype == np.uint8
    assert_same_corpus(prepared.read_cache(path), corpus)
    # A format-3 cache held fixed-width unicode arrays; they load as the same ids.
    old = tmp_path / "old.npz"
    np.savez(
        old,
        format=np.int64(3),
        name=np.str_("s"),
        offsets=corpus.offsets,
        items=corpus.items,
        raw_item_ids=corpus.raw_item_ids.astype(str),
        raw_user_ids=corpus.raw_user_ids.astype(str),
    )
    restored = prepared.read_cache(old)
    assert restored.raw_item_ids.dtype == object
    assert_same_corpus(restored, corpus)
