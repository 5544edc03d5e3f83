"""What every TFDS builder of the project shares: the example schema, examples from sequences,
the manual (offline) directory, downloading with a fast reachability check and a content check,
and the refusal of a data set in which no user could be evaluated.

Example schema: `{"user_id": int64, "items": Tensor(shape=(None,), int64)}`, raw ids, one
example per user, items oldest first; sources with times add `"timestamps": Tensor(shape=(None,),
int64)`, seconds aligned with `items` (for the temporal split).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable

import numpy as np
import requests
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from bert4rec_jax.datasets import corpus as corpus_lib
from bert4rec_jax.datasets import hashes, readers

# Seconds to wait for a source's server to answer the reachability check (not the download).
PROBE_TIMEOUT_S = 10


def sequence_info(
    builder: tfds.core.DatasetBuilder,
    description: str,
    *,
    homepage: str | None = None,
    citation: str | None = None,
    metadata: tfds.core.Metadata | None = None,
    timestamps: bool = False,
) -> tfds.core.DatasetInfo:
    """The DatasetInfo of every builder of the project: one example per user, source order.

    `timestamps`: the examples also hold each interaction's time (int64 seconds), which the
    temporal split needs; sources without times leave it out.
    """
    schema = {
        "user_id": np.int64,  # the source's user id
        # The source's item ids, oldest first. A 1-D Tensor rather than Sequence(int64): the
        # same data and serialisation, but TFDS encodes a Sequence element by element, which
        # made preparing 20M interactions ~20x slower.
        "items": tfds.features.Tensor(shape=(None,), dtype=np.int64),
    }
    if timestamps:
        schema["timestamps"] = tfds.features.Tensor(shape=(None,), dtype=np.int64)
    features = tfds.features.FeaturesDict(schema)
    return tfds.core.DatasetInfo(
        builder=builder,
        # Keep the source's user order; TFDS's shuffle only costs time here.
        disable_shuffling=True,
        description=description,
        features=features,
        homepage=homepage,
        citation=citation,
        metadata=metadata,
    )


def examples_from_sequences(sequences: readers.Sequences):
    """Yields (key, example) pairs, one per user, keyed by the raw user id (with the users'
    timestamps where the sequences have them)."""
    items, times = sequences.raw_items, sequences.timestamps
    for user, start, end in zip(
        sequences.raw_user_ids.tolist(),
        sequences.offsets[:-1].tolist(),
        sequences.offsets[1:].tolist(),
        strict=True,
    ):
        # int32 items (your own file's) are widened per user, never as a whole copy.
        example = {"user_id": user, "items": items[start:end].astype(np.int64, copy=False)}
        if times is not None:
            example["timestamps"] = times[start:end].astype(np.int64, copy=False)
        yield user, example


def manual_dir_or_none(dl_manager: tfds.download.DownloadManager) -> epath.Path | None:
    """The manual directory when it exists and is not empty (the offline path), else None."""
    try:
        return epath.Path(dl_manager.manual_dir)
    except AssertionError:  # TFDS's way of saying "not given, missing or empty"
        return None


def manual_config(
    config: tfds.core.BuilderConfig, source: epath.PathLike
) -> tfds.core.BuilderConfig:
    """The config under which a manual copy is prepared: `<name>-manual-<content key>`.

    TFDS reuses a prepared config whatever its source; naming the config after the manual copy's
    content (and file name: ml-20m.zip and ml-20m.txt are read differently) makes a replaced or
    edited copy a new config, prepared anew, while the official download keeps `<name>`.

    Args:
      config: one of the builder's configs.
      source: the manual copy that the builder will read.

    Returns:
      A copy of `config` with the new name.
    """
    source = epath.Path(source)
    text = f"{source.name}:{hashes.content_fingerprint(source)}"
    key = hashlib.sha256(text.encode()).hexdigest()[:12]
    return dataclasses.replace(config, name=f"{config.name}-manual-{key}")


def delete_download(path: os.PathLike) -> None:
    """Deletes a rejected download and the INFO file TFDS keeps beside it."""
    path = epath.Path(path)
    for leftover in (path, path.parent / (path.name + ".INFO")):
        leftover.unlink(missing_ok=True)


def check_reachable(url: str, filename: str, advice: str) -> None:
    """Fails within seconds, with `advice`, when `url` cannot be reached.

    TFDS's downloader retries a refused or unresolvable connection with exponential back-off
    for minutes (~209 s) and then raises a raw `requests` traceback; one request without
    retries, before it starts, tells the same thing at once. Servers that refuse HEAD (405, 501)
    are left to the real download.

    Args:
      url: the source about to be downloaded.
      filename: the file the data set needs (kept on the error).
      advice: the error's second sentence: how to work offline (`offline_advice`).

    Raises:
      readers.SourceUnavailableError: the server cannot be reached or answers with an error.
    """
    try:
        response = requests.head(url, timeout=PROBE_TIMEOUT_S, allow_redirects=True)
    except requests.RequestException as e:
        # requests wraps urllib3's error, whose `reason` is the short cause (e.g. "Failed to
        # resolve 'raw.githubusercontent.com'", "Connection refused").
        cause = e.args[0] if e.args else e
        reason = getattr(cause, "reason", cause)
        raise readers.SourceUnavailableError(url, filename, str(reason), advice) from None
    status = response.status_code
    if status >= 400 and status not in (405, 501):
        reason = f"HTTP {status} {response.reason}"
        raise readers.SourceUnavailableError(url, filename, reason, advice)


def offline_advice(dataset: str, filename: str, url: str, env: str, alternative: str = "") -> str:
    """How to work without the network, for `readers.SourceUnavailableError`.

    Args:
      dataset: the data set's name as `load_corpus` knows it.
      filename: the file to put in the manual directory.
      url: where to get it.
      env: the environment variable that sets a mirror.
      alternative: another form the manual directory may hold, e.g. the extracted zip.

    Returns:
      The advice, a few sentences.
    """
    alternative = f" (or {alternative})" if alternative else ""
    return (
        f"The {dataset!r} data set needs {filename}. To work offline, download it from {url} on "
        f"a machine with internet, put it{alternative} in a folder and pass "
        "--config.manual_dir=<that folder> (load_corpus(manual_dir=...)); nothing is downloaded "
        f"then. Or set {env} to a reachable mirror."
    )


def download_and_verify(
    dl_manager: tfds.download.DownloadManager,
    url: str,
    check: Callable[[epath.Path], None],
    *,
    filename: str,
    advice: str,
) -> epath.Path:
    """Downloads `url` with TFDS and checks it with `check(path)`, deleting it if that fails.

    Args:
      dl_manager: the builder's download manager.
      url: the source.
      check: raises when the downloaded file is not the expected one.
      filename: the file the data set needs (for the message when `url` is unreachable).
      advice: what to do when `url` is unreachable (`offline_advice`).

    Returns:
      The downloaded file.

    Raises:
      readers.SourceUnavailableError: `url` cannot be reached.
    """
    check_reachable(url, filename, advice)
    logging.info("Downloading %s", url)
    path = epath.Path(dl_manager.download(url))
    try:
        check(path)
    except Exception:
        delete_download(path)
        raise
    logging.info("Downloaded and verified %s (%d bytes)", url, path.stat().length)
    return path


def verify_blob_id(path: os.PathLike, expected: str, name: str) -> None:
    """Raises `readers.ChecksumError` unless the file's git blob id is `expected`."""
    actual = hashes.git_blob_id(path)
    if actual != expected:
        raise readers.ChecksumError(name, "git blob id", expected, actual)


def check_evaluable(sequences: readers.Sequences, name: str) -> None:
    """Refuses a data set in which no user could be evaluated, before anything is written.

    Args:
      sequences: the parsed sequences.
      name: the source file, for the message.

    Raises:
      readers.DataFormatError: when every user has fewer than `corpus.MIN_EVAL_LENGTH` items.
    """
    if sequences.num_users and np.max(sequences.lengths) >= corpus_lib.MIN_EVAL_LENGTH:
        return
    raise readers.DataFormatError(
        name,
        None,
        f"no evaluable user: all {sequences.num_users} users have fewer than "
        f"{corpus_lib.MIN_EVAL_LENGTH} interactions",
    )
