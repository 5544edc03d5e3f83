"""`load_corpus`: a data set's name in, a `Corpus` out, prepared once through TFDS and cached.

Every data set, your own file included, takes this one path; the cache's key, layout and failure
rules are in `load_corpus`'s docstring (docs/data.md says what a user sees).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from bert4rec_jax.datasets import (
    builders,
    custom,
    features,
    file_options,
    movielens,
    paper,
    parts,
    prepared,
    readers,
    synthetic,
)
from bert4rec_jax.datasets import corpus as corpus_lib
from bert4rec_jax.datasets.prepared import CACHE_DIRNAME, CACHE_FORMAT, DATASETS, data_root

# Users per batch when reading TFDS records back; large batches keep the per-batch cost low.
_READ_BATCH = 8192


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Which TFDS builder and config make a data set."""

    builder_cls: type[tfds.core.GeneratorBasedBuilder]
    config: tfds.core.BuilderConfig

    @property
    def config_name(self) -> str:
        return self.config.name


def _spec(
    dataset: str,
    synthetic_params: Mapping[str, Any] | None,
    manual_dir: str = "",
    file: Mapping[str, Any] | None = None,
) -> _Spec:
    """The builder and config of a data set; hashes the source file where there is one."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid names are: {', '.join(DATASETS)}")
    if dataset == "synthetic":
        params = dict(synthetic_params or {})
        unknown = sorted(set(params) - {"num_users", "num_items", "seed"})
        if unknown:
            raise ValueError(
                f"unknown synthetic.* fields {unknown}; valid: num_users, num_items, seed"
            )
        config = synthetic.synthetic_config(
            num_users=int(params.get("num_users", synthetic.DEFAULT_NUM_USERS)),
            num_items=int(params.get("num_items", synthetic.DEFAULT_NUM_ITEMS)),
            seed=int(params.get("seed", synthetic.DEFAULT_SEED)),
        )
        return _Spec(synthetic.SyntheticSequences, config)
    if dataset == "file":
        options = file_options.FileOptions.from_mapping(file or {})
        if not parts.is_glob(options.path) and not epath.Path(options.path).exists():
            raise readers.DataFormatError(options.path, None, "file not found (file.path)")
        return _Spec(custom.CustomInteractions, custom.file_config(options))
    if dataset.endswith("-raw"):
        builder_cls = movielens.MovielensSequences
        name = dataset.removeprefix("ml-").removesuffix("-raw")
    else:
        builder_cls, name = paper.Bert4recPaper, dataset
    config = builder_cls.builder_configs[name]
    if manual_dir:
        _check_manual_dir(manual_dir, dataset)
        config = builders.manual_config(config, builder_cls.manual_source(config, manual_dir))
    return _Spec(builder_cls, config)


def _check_manual_dir(manual_dir: str, dataset: str) -> None:
    manual = epath.Path(manual_dir)
    if not manual.is_dir() or not any(manual.iterdir()):
        raise FileNotFoundError(
            f"manual_dir {manual_dir!r} does not exist or is empty; it should hold the "
            f"source files of {dataset!r}"
        )


def corpus_cache_path(
    dataset: str,
    *,
    data_dir: str = "",
    manual_dir: str = "",
    synthetic: Mapping[str, Any] | None = None,
    file: Mapping[str, Any] | None = None,
) -> epath.Path:
    """Where `load_corpus` caches a data set's corpus (the file may not exist yet).

    With a manual copy or your own file, this reads the file to hash its content.

    Args:
      dataset: one of `DATASETS`.
      data_dir: as for `load_corpus`.
      manual_dir: as for `load_corpus`.
      synthetic: as for `load_corpus`.
      file: as for `load_corpus`.

    Returns:
      The path of the cache file.
    """
    return _cache_path(dataset, _spec(dataset, synthetic, manual_dir, file), data_dir)


def _cache_path(dataset: str, spec: _Spec, data_dir: str) -> epath.Path:
    version = spec.builder_cls.VERSION
    name = f"{spec.builder_cls.name}-{spec.config_name}-{version}-c{CACHE_FORMAT}.npz"
    return data_root(data_dir) / CACHE_DIRNAME / dataset / name


def _train_batches(builder: tfds.core.DatasetBuilder, timed: bool = False) -> tf.data.Dataset:
    """The `train` split in batches of users: {"user_id": [b], "items": [b, (length)]}, and
    "timestamps" [b, (length)] when `timed`."""
    if builder.info.file_format == tfds.core.FileFormat.TFRECORD:
        # TFDS decodes records one by one; parsing whole batches of the same records with the
        # same schema is several times faster (most of a 20M-interaction read-back).
        files = [os.fspath(p) for p in builder.info.splits["train"].filepaths]
        spec = {
            "user_id": tf.io.FixedLenFeature([], tf.int64),
            "items": tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64),
        }
        if timed:
            spec["timestamps"] = tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64)
        return (
            tf.data.TFRecordDataset(files)
            .batch(_READ_BATCH)
            .map(lambda records: tf.io.parse_example(records, spec))
            .prefetch(2)
        )
    ds = builder.as_dataset(split="train", shuffle_files=False)
    return ds.ragged_batch(_READ_BATCH).prefetch(2)


def _user_blocks(builder: tfds.core.DatasetBuilder):
    """`custom.CustomInteractions`'s records: (user ids, lengths, items, timestamps or None)."""
    names = ["user_ids", "lengths", "items"]
    dtypes = [np.int64, np.int64, np.int32]
    timed = "timestamps" in builder.info.features.keys()
    if timed:
        names.append("timestamps")
        dtypes.append(np.float64)
    if builder.info.file_format == tfds.core.FileFormat.TFRECORD:
        # The raw bytes as stored, parsed a few records at a time: no TFDS decoding step.
        files = [os.fspath(p) for p in builder.info.splits["train"].filepaths]
        spec = {name: tf.io.FixedLenFeature([], tf.string) for name in names}
        records = (
            tf.data.TFRecordDataset(files)
            .batch(16)
            .map(lambda batch: tf.io.parse_example(batch, spec))
            .prefetch(2)
        )
        for batch in records:
            columns = [batch[name].numpy() for name in names]
            for block in zip(*columns, strict=True):
                arrays = [np.frombuffer(b, d) for b, d in zip(block, dtypes, strict=True)]
                yield (*arrays, None) if not timed else tuple(arrays)
        return
    for example in tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False)):
        arrays = [example[name] for name in names]
        yield (*arrays, None) if not timed else tuple(arrays)


def _per_user_blocks(builder: tfds.core.DatasetBuilder):
    """The other builders' records (one per user) in batches: (user ids, lengths, items,
    timestamps or None)."""
    timed = "timestamps" in builder.info.features.keys()
    for batch in _train_batches(builder, timed):
        ragged = batch["items"]  # [batch, (length)]
        times = batch["timestamps"].flat_values.numpy() if timed else None
        yield (
            batch["user_id"].numpy(),
            ragged.row_lengths().numpy(),
            ragged.flat_values.numpy(),
            times,
        )


def sequences_from_tfds(builder: tfds.core.DatasetBuilder) -> readers.Sequences:
    """Reads a prepared builder's `train` split back into sequences (users by raw id).

    Args:
      builder: a prepared builder with the project's schema (`builders.sequence_info`), or
        `custom.CustomInteractions` (blocks of users; items stay int32).

    Returns:
      The sequences (with timestamps where the records hold them); TFDS shuffles examples when
      writing, so users are re-sorted by raw id.
    """
    blocks = "lengths" in builder.info.features.keys()
    users, lengths, items, times = [], [], [], []
    for block_users, block_lengths, block_items, block_times in (
        _user_blocks(builder) if blocks else _per_user_blocks(builder)
    ):
        users.append(block_users)
        lengths.append(block_lengths)
        items.append(block_items)
        if block_times is not None:
            times.append(block_times)
    if not users:
        raise ValueError(f"TFDS data set {builder.info.full_name} has no examples")
    lengths_all = np.concatenate(lengths).astype(np.int64)
    offsets = np.zeros(len(lengths_all) + 1, dtype=np.int64)
    np.cumsum(lengths_all, out=offsets[1:])
    items_all = np.concatenate(items)
    del items
    return readers.Sequences(
        np.concatenate(users).astype(np.int64),
        offsets,
        items_all if blocks else items_all.astype(np.int64, copy=False),
        np.concatenate(times) if times else None,
    ).sorted_by_user()


@contextlib.contextmanager
def _remove_new_dirs_on_failure(paths: list[epath.Path]):
    """On an exception, removes those of `paths` that this call created, if they are empty.

    TFDS writes a `.config/metadata.json` into a builder's directory before it prepares; when
    the directory is new, that file goes too, so that a failed first prepare leaves no file.
    """
    new = [p for p in paths if not p.exists()]
    try:
        yield
    except BaseException:
        for p in sorted(new, key=lambda p: len(p.parts), reverse=True):
            (p / ".config").rmtree(missing_ok=True)
            # Only succeeds when empty (epath raises ValueError for a non-empty directory).
            with contextlib.suppress(OSError, ValueError):
                p.rmdir()
        raise


def _prepare_with_tfds(
    dataset: str, spec: _Spec, root: epath.Path, manual_dir: str
) -> corpus_lib.Corpus:
    """Runs the TFDS builder (download, manual copy or file -> records) and builds the corpus."""
    builder = spec.builder_cls(config=spec.config, data_dir=os.fspath(root))
    download_dir = root / "downloads" / f"bert4rec-{uuid.uuid4().hex}"
    created = [
        root,
        root / builder.name,
        root / builder.name / spec.config_name,
        root / "downloads",
    ]
    with _remove_new_dirs_on_failure(created):
        start = time.perf_counter()
        if builder.is_prepared():
            logging.info("TFDS data set %s is already prepared", builder.info.full_name)
        else:
            logging.info(
                "Preparing TFDS data set %s in %s (%s)",
                builder.info.full_name,
                root,
                _source_description(spec, manual_dir),
            )
            config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
            # TFDS prints "Downloading and preparing dataset Unknown size ..." and "... downloaded
            # and prepared" to stdout for every data set, generated ones too: the log lines
            # around this say it. Its progress bars (stderr) show only on a terminal, where
            # their cursor codes ("\x1b[A") do not end up in a log file.
            tfds.display_progress_bar(sys.stderr.isatty())
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    builder.download_and_prepare(download_dir=download_dir, download_config=config)
            finally:
                download_dir.rmtree(missing_ok=True)
            logging.info(
                "Prepared %s: %d users in %.1f s",
                builder.info.full_name,
                builder.info.splits["train"].num_examples,
                time.perf_counter() - start,
            )
        sequences = sequences_from_tfds(builder)
    raw_user_ids, item_vocab = sequences.raw_user_ids, None
    if isinstance(builder.info.metadata, custom.RawIds):
        # The records hold indices into the vocabularies of raw ids (see custom.py).
        raw_user_ids = builder.info.metadata["user_ids"][raw_user_ids]
        item_vocab = builder.info.metadata["item_ids"]
    corpus = corpus_lib.corpus_from_sequences(
        dataset,
        raw_user_ids,
        sequences.offsets,
        sequences.raw_items,
        item_vocab=item_vocab,
        timestamps=sequences.timestamps,
    )
    metadata = builder.info.metadata
    if isinstance(metadata, movielens.SideFeatures):
        item_features, user_features = {}, {}
        if metadata.get("item") is not None:
            item_features = features.align_items(
                corpus.raw_item_ids, corpus.vocab_size, metadata["item"]
            )
        if metadata.get("user") is not None:
            user_features = features.align_users(corpus.raw_user_ids, metadata["user"])
        corpus = dataclasses.replace(
            corpus, item_features=item_features, user_features=user_features
        )
    return corpus


def _source_description(spec: _Spec, manual_dir: str) -> str:
    options = getattr(spec.config, "options", None)
    if isinstance(options, file_options.FileOptions):
        return f"from {options.path}"
    if manual_dir:
        return f"offline, from {manual_dir}"
    return "downloading if needed"


def load_corpus(
    dataset: str,
    *,
    data_dir: str = "",
    manual_dir: str = "",
    synthetic: Mapping[str, Any] | None = None,
    file: Mapping[str, Any] | None = None,
) -> corpus_lib.Corpus:
    """Loads a data set as a `Corpus`, preparing it through TFDS on first use and caching it.

    The first load runs the data set's TFDS builder (`download_and_prepare`: download, or read
    the manual copy or your file, parse, write TFDS records under
    `<data_dir>/<builder>/<config>/<version>`), reads the records back into flat numpy arrays and
    builds the `Corpus` (`corpus_from_sequences`), then caches it as one `.npz` (dense item ids
    plus the raw-id mappings) at `corpus_cache_path(...)`; later loads read only that file (a
    hit is logged, "Corpus cache hit ...").

    What a source file holds is part of the key: a manual copy is prepared under the config
    `<name>-manual-<key>` and your own file under `<stem>-<key>`, the key hashing the file's
    whole content (`hashes.content_fingerprint`; for a directory of parts every part's name,
    size and content, `file_options.source_key`; plus the reading options for your own file),
    so a replaced or edited file is prepared anew on every host that sees the same bytes, for
    one read of the file per load (~0.7 s per 500 MB), also on a cache hit. Downloads are
    verified by checksum, so they keep the plain config name. Paths go through `etils.epath`
    (`gs://...` works; there the cache's rename is a copy, still never visible half-written).

    Failures leave nothing half-written: the cache file is written under a temporary name and
    renamed into place; TFDS prepares into an `.incomplete` directory that it renames only on
    success; downloads go to a private directory under `<data_dir>/downloads/`, removed
    afterwards; directories this call created are removed again when it fails.

    Args:
      dataset: one of `DATASETS`: "synthetic"; the paper's files "beauty", "steam", "ml-1m",
        "ml-20m"; MovieLens from raw ratings "ml-100k-raw", "ml-1m-raw", "ml-20m-raw"; "file",
        your own interaction file.
      data_dir: where TFDS keeps prepared data and this function its corpus cache; "" = TFDS's
        default ($TFDS_DATA_DIR or ~/tensorflow_datasets). May be `gs://...`.
      manual_dir: the offline path: a directory holding the source (e.g. `beauty.txt`, or
        `ml-100k/u.data` or `ml-100k.zip`); nothing is downloaded when it is set.
        "" = download, with checksum verification. Ignored by "synthetic" and "file".
      synthetic: for "synthetic" only: `num_users`, `num_items`, `seed` (defaults 2000, 500, 0).
      file: for "file" only: `config.file`, the fields of `file_options.FileOptions` (`path`: a
        file, a directory of part files or a glob,
        `format`, `columns`, `delimiter`, `user_column`, `item_column`, `timestamp_column`,
        `min_user_interactions`, `min_item_interactions`, `drop_repeats`).

    Returns:
      The corpus; users in ascending raw-id order, items remapped to 1..V by raw id. Raw ids
      are int64, or unicode strings where your file's ids are strings.

    Raises:
      ValueError: an unknown data set or `file.*` field, or a data set with no evaluable user.
      FileNotFoundError: `manual_dir` set but missing or empty.
      readers.DataFormatError: a missing, empty or malformed source file.
      readers.ChecksumError: a download that is not the expected file.
      readers.SourceUnavailableError: a download whose server cannot be reached (offline).
    """
    if dataset in ("synthetic", "file"):
        manual_dir = ""
    spec = _spec(dataset, synthetic, manual_dir, file)
    request = dict(dataset=dataset, manual_dir=manual_dir, synthetic=synthetic, file=file)
    root = data_root(data_dir)
    cache = _cache_path(dataset, spec, data_dir)
    corpus = prepared.read_hit(cache, dataset)
    if corpus is not None:
        prepared.remember(cache, data_dir=data_dir, **request)
        return prepared.with_file_features(corpus, dataset, file)
    start = time.perf_counter()
    with _remove_new_dirs_on_failure([root / CACHE_DIRNAME, cache.parent]):
        corpus = _prepare_with_tfds(dataset, spec, root, manual_dir)
        # Fails loudly, before anything is cached, if no user can be evaluated.
        corpus_lib.leave_one_out(corpus)
        prepared.write_cache(cache, corpus)
    prepared.remember(cache, data_dir=data_dir, **request)
    logging.info(
        "Built corpus %s in %.1f s: %d users, %d items, %d interactions; cached at %s",
        dataset,
        time.perf_counter() - start,
        corpus.num_users,
        corpus.num_items,
        corpus.num_interactions,
        cache,
    )
    return prepared.with_file_features(corpus, dataset, file)
