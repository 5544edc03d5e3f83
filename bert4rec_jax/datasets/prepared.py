"""Prepared corpora on disk, read and written without TensorFlow.

`loading.load_corpus` prepares a data set once through TFDS and caches its `Corpus` as one `.npz`.
Reading that cache back needs only numpy, so this module holds everything about the cache that
does not need TensorFlow: the data sets' names, the data directory, the cache's file format, and
a small index from a *request* (the arguments `load_corpus` was called with) to the cache file it
produced. With the index, `load_prepared` finds an already-prepared corpus without TFDS, which
computes the cache's name from its builders: a training machine without TensorFlow (lean CUDA
images) can train from a corpus prepared elsewhere into the same data directory.

An index entry records each source file's size and modification time; when either changed, the
entry is not trusted and `load_corpus` (with TensorFlow) hashes the file and prepares it anew.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging
from etils import epath

from bert4rec_jax.atomic import write_atomically
from bert4rec_jax.datasets import corpus as corpus_lib
from bert4rec_jax.datasets import features, parts

DATASETS = (
    "synthetic",
    "beauty",
    "steam",
    "ml-1m",
    "ml-20m",
    "ml-100k-raw",
    "ml-1m-raw",
    "ml-20m-raw",
    "file",
)
# Bump when the cached arrays change meaning; old cache files are then ignored.
# 3: optional item and user features (`_ITEM_FEATURE` / `_USER_FEATURE` + name).
# 4: string raw ids as offsets + UTF-8 bytes (`corpus.pack_raw_ids`), not fixed-width unicode;
#    format 3 files are still read (their ids are converted as they load).
# An optional `timestamps` array (the temporal split's) needed no new format: the builders that
# now store times changed their VERSION, which is in the cache's name, so a cache written before
# them (without times) is never found for them; older code reading a new file ignores the key.
CACHE_FORMAT = 4
_READABLE_FORMATS = (3, 4)
CACHE_DIRNAME = "bert4rec_corpus"
_INDEX_DIRNAME = "requests"
# Key prefixes of the features' arrays in the cache's .npz.
_ITEM_FEATURE = "item_feature__"
_USER_FEATURE = "user_feature__"


def data_root(data_dir: str = "") -> epath.Path:
    """`data_dir`, else TFDS's default data directory ($TFDS_DATA_DIR or ~/tensorflow_datasets).

    The default is TFDS's own rule (`tfds.core.constants.DATA_DIR`), restated so that it needs no
    TensorFlow.
    """
    default = os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")
    return epath.Path(data_dir or default).expanduser()


def write_cache(path: epath.Path, corpus: corpus_lib.Corpus) -> None:
    """Writes the corpus under a temporary name in the same directory, then renames it."""
    # Serialised in memory first: np.savez seeks in its output, which object stores' file
    # objects do not allow; the corpus is small next to what preparing it took.
    buffer = io.BytesIO()
    np.savez(
        buffer,
        format=np.int64(CACHE_FORMAT),
        name=np.str_(corpus.name),
        offsets=corpus.offsets,
        items=corpus.items,
        **corpus_lib.pack_raw_ids(corpus.raw_item_ids, "raw_item_ids"),
        **corpus_lib.pack_raw_ids(corpus.raw_user_ids, "raw_user_ids"),
        **{_ITEM_FEATURE + k: v for k, v in corpus.item_features.items()},
        **{_USER_FEATURE + k: v for k, v in corpus.user_features.items()},
        **({} if corpus.timestamps is None else {"timestamps": corpus.timestamps}),
    )
    write_atomically(path, buffer.getbuffer())  # a view: no second copy of the corpus


def read_cache(path: epath.Path) -> corpus_lib.Corpus | None:
    """Reads a cached corpus, or returns None (with a warning) if the file is unusable."""
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as z:
            if int(z["format"]) not in _READABLE_FORMATS:
                raise ValueError(
                    f"cache format {int(z['format'])}, expected one of {_READABLE_FORMATS}"
                )
            result = corpus_lib.Corpus(
                name=str(z["name"]),
                offsets=z["offsets"],
                items=z["items"],
                raw_item_ids=corpus_lib.unpack_raw_ids(z, "raw_item_ids"),
                raw_user_ids=corpus_lib.unpack_raw_ids(z, "raw_user_ids"),
                item_features=_prefixed(z, _ITEM_FEATURE),
                user_features=_prefixed(z, _USER_FEATURE),
                timestamps=z["timestamps"] if "timestamps" in z.files else None,
            )
        if result.offsets[-1] != result.num_interactions:
            raise ValueError("offsets do not match items")
        if result.timestamps is not None and len(result.timestamps) != result.num_interactions:
            raise ValueError("timestamps do not match items")
        features.check_features(result.item_features, result.vocab_size, "item")
        features.check_features(result.user_features, result.num_users + 1, "user")
        return result
    except Exception as e:  # any unreadable cache is rebuilt, never trusted
        logging.warning("Ignoring unreadable corpus cache %s (%s); rebuilding it", path, e)
        return None


def _prefixed(z: Any, prefix: str) -> dict[str, np.ndarray]:
    return {k.removeprefix(prefix): z[k] for k in z.files if k.startswith(prefix)}


def _request(
    dataset: str,
    manual_dir: str,
    synthetic: Mapping[str, Any] | None,
    file: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """What identifies a `load_corpus` call, less the data directory (the index lives there)."""
    file = dict(file or {}) if dataset == "file" else {}
    if not file.get("drop_duplicates", True):
        del file["drop_duplicates"]  # off: the request of a config from before the field
    return {
        "dataset": dataset,
        "manual_dir": manual_dir if dataset not in ("synthetic", "file") else "",
        "synthetic": dict(synthetic or {}) if dataset == "synthetic" else {},
        "file": file,
    }


def _index_path(root: epath.Path, request: dict[str, Any]) -> epath.Path:
    key = hashlib.sha1(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]
    return root / CACHE_DIRNAME / _INDEX_DIRNAME / f"{request['dataset']}-{key}.json"


def _source_files(request: dict[str, Any]) -> list[epath.Path]:
    """The files a request reads whose later edits must invalidate its index entry."""
    if request["file"].get("path"):
        # A directory's or glob's parts: one added, removed or rewritten invalidates the entry.
        return [part.path for part in parts.list_parts(request["file"]["path"])]
    if request["manual_dir"]:
        manual = epath.Path(request["manual_dir"])
        if not manual.is_dir():
            return []
        return sorted(root / name for root, _, names in manual.walk() for name in names)
    return []


def _stat(paths: list[epath.Path]) -> list[list[Any]]:
    out = []
    for p in paths:
        info = p.stat()
        out.append([os.fspath(p), int(info.length), float(info.mtime)])
    return out


def remember(
    cache: epath.Path,
    *,
    data_dir: str,
    dataset: str,
    manual_dir: str = "",
    synthetic: Mapping[str, Any] | None = None,
    file: Mapping[str, Any] | None = None,
) -> None:
    """Records that this request's corpus is cached at `cache` (called by `load_corpus`)."""
    request = _request(dataset, manual_dir, synthetic, file)
    entry = {
        "request": request,
        "cache": os.fspath(cache),
        "sources": _stat(_source_files(request)),
    }
    write_atomically(_index_path(data_root(data_dir), request), json.dumps(entry).encode())


def load_prepared(
    dataset: str,
    *,
    data_dir: str = "",
    manual_dir: str = "",
    synthetic: Mapping[str, Any] | None = None,
    file: Mapping[str, Any] | None = None,
) -> corpus_lib.Corpus | None:
    """The corpus `load_corpus` prepared for the same arguments, read without TensorFlow.

    Returns:
      The corpus, or None when it was never prepared here, its sources changed since, or its
      cache cannot be read (then `load_corpus` is the way).
    """
    request = _request(dataset, manual_dir, synthetic, file)
    index = _index_path(data_root(data_dir), request)
    try:
        entry = json.loads(index.read_text())
        if entry["request"] != request or entry["sources"] != _stat(_source_files(request)):
            return None
        cache = epath.Path(entry["cache"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    corpus = read_hit(cache, dataset)
    return None if corpus is None else with_file_features(corpus, dataset, file)


def with_file_features(
    corpus: corpus_lib.Corpus, dataset: str, file: Mapping[str, Any] | None
) -> corpus_lib.Corpus:
    """The corpus with the item features of `file.item_features_path`, if set (dataset "file").

    The features file is read at every load rather than cached with the corpus: it is small
    (one row per item) and so its edits take effect without preparing the interactions anew.

    Raises:
      readers.DataFormatError: a missing or malformed features file, naming line and column.
    """
    path = (file or {}).get("item_features_path", "") if dataset == "file" else ""
    if not path:
        return corpus
    item_column = (file or {}).get("item_column") or "item_id"
    raw = features.read_item_features_csv(path, item_column)
    aligned = features.align_items(corpus.raw_item_ids, corpus.vocab_size, raw)
    logging.info(
        "Item features from %s: %s; %d of %d items have a row",
        path,
        ", ".join(f"{k} ({n - 1} categories)" for k, n in features.num_categories(aligned).items()),
        int(np.any(np.stack([v.any(axis=1) for v in aligned.values()]), axis=0).sum()),
        corpus.num_items,
    )
    return dataclasses.replace(corpus, item_features=aligned)


def read_hit(cache: epath.Path, dataset: str) -> corpus_lib.Corpus | None:
    """The corpus cached at `cache`, with a log line saying so; None when absent or unreadable."""
    if not cache.exists():
        return None
    corpus = read_cache(cache)
    if corpus is not None:
        logging.info(
            "Corpus cache hit for %s at %s: %d users, %d items, %d interactions",
            dataset,
            cache,
            corpus.num_users,
            corpus.num_items,
            corpus.num_interactions,
        )
    return corpus
