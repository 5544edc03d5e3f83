"""Data sets: TFDS builders, raw-file readers, the synthetic generator and `load_corpus`.

    from bert4rec_jax.datasets import DATASETS, load_corpus
    corpus = load_corpus("beauty", data_dir="/tmp/tfds", manual_dir="../shared/data")

`DATASETS`, `data_root` and `load_prepared` come from `prepared.py`, which needs no TensorFlow.
`load_corpus` and `corpus_cache_path` are imported lazily (PEP 562) from `loading.py`, which
imports TensorFlow and registers the TFDS builders `bert4rec_paper`, `movielens_sequences`,
`synthetic_sequences` and `custom_interactions` (your own file,
`load_corpus("file", file={"path": ...})`) with `tfds.builder` / `tfds.load`.
"""

from typing import Any

from bert4rec_jax.datasets.prepared import DATASETS, data_root, load_prepared

_LAZY = ("corpus_cache_path", "load_corpus")

__all__ = ["DATASETS", "data_root", "load_prepared", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from bert4rec_jax.datasets import loading  # lazy on purpose: keeps TF out of light imports

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
