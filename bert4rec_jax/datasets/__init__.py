"""Data sets: TFDS builders, raw-file readers, the synthetic generator and `load_corpus`.

    from bert4rec_jax.datasets import DATASETS, load_corpus
    corpus = load_corpus("beauty", data_dir="/tmp/tfds", manual_dir="../shared/data")

`load_corpus`, `corpus_cache_path`, `data_root` and `DATASETS` are imported lazily (PEP 562) so that
`from bert4rec_jax.datasets import corpus` stays light and does not pull in TensorFlow. Importing
`bert4rec_jax.datasets.loading` registers the TFDS builders `bert4rec_paper`,
`movielens_sequences`, `synthetic_sequences` and `custom_interactions` (your own file,
`load_corpus("file", file={"path": ...})`) with `tfds.builder` / `tfds.load`.
"""

from typing import Any

_LAZY = ("DATASETS", "corpus_cache_path", "data_root", "load_corpus")

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from bert4rec_jax.datasets import loading  # lazy on purpose: keeps TF out of light imports

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
