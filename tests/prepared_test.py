"""Prepared corpora read back without TensorFlow, and only while their sources are unchanged."""

import os
import subprocess
import sys

import numpy as np

from bert4rec_jax.datasets import load_corpus, prepared

SMALL = {"num_users": 50, "num_items": 40, "seed": 0}


def assert_same_corpus(a, b):
    assert a.name == b.name
    for field in ("offsets", "items", "raw_item_ids", "raw_user_ids"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_prepared_corpus_is_found_without_tensorflow(tmp_path):
    data_dir = str(tmp_path / "data")
    assert prepared.load_prepared("synthetic", data_dir=data_dir, synthetic=SMALL) is None
    corpus = load_corpus("synthetic", data_dir=data_dir, synthetic=SMALL)
    assert_same_corpus(
        prepared.load_prepared("synthetic", data_dir=data_dir, synthetic=SMALL), corpus
    )
    # Another request (other synthetic size) has no entry.
    other = dict(SMALL, num_items=41)
    assert prepared.load_prepared("synthetic", data_dir=data_dir, synthetic=other) is None
    # In a process where TensorFlow cannot be imported at all.
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "from bert4rec_jax.datasets import prepared\n"
        f"c = prepared.load_prepared('synthetic', data_dir={data_dir!r}, synthetic={SMALL!r})\n"
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
