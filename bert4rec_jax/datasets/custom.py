"""TFDS builder for your own interaction log: `config.dataset = "file"`.

`custom_interactions` reads one CSV, TSV, Parquet or paper-format file, or a directory of part
files, as `interactions` describes, and writes its users in blocks (`CustomInteractions`; the
other builders write one example per user); its configs are made on the fly (`file_config`),
keyed by the log's content and reading options.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from bert4rec_jax.datasets import builders, file_options, interactions, ordering, parts, readers
from bert4rec_jax.datasets import corpus as corpus_lib

RAW_IDS_FILE = "raw_ids.npz"


class RawIds(tfds.core.Metadata):
    """The sorted vocabularies of raw user and item ids, saved as one `.npz` beside the records.

    The records' `user_id` and `items` (`builders.sequence_info`'s schema) hold indices into
    these vocabularies rather than the raw ids, because ids may be strings: a string feature
    would repeat an item's id at each of its interactions (20M strings for an ML-20M-sized file,
    ~10x the bytes of the int64 indices) and the read-back would decode them one Python object
    each, whereas indices keep the records and the read-back as fast as the built-in data sets'.
    TFDS's own `ClassLabel` does the same (integers in the records, the names beside them).

    Keys: "user_ids" and "item_ids", numpy arrays of int64 or str objects; saved without pickle,
    strings as offsets + UTF-8 bytes (`corpus.pack_raw_ids`; older unicode arrays still load).
    A small `metadata.json` is written too: TFDS restores a custom `Metadata` only when that
    file exists.
    """

    def save_metadata(self, data_dir: epath.PathLike) -> None:
        data_dir = epath.Path(data_dir)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            **corpus_lib.pack_raw_ids(self["user_ids"], "user_ids"),
            **corpus_lib.pack_raw_ids(self["item_ids"], "item_ids"),
        )
        (data_dir / RAW_IDS_FILE).write_bytes(buffer.getvalue())
        summary = {
            "raw_ids_file": RAW_IDS_FILE,
            "num_user_ids": len(self["user_ids"]),
            "num_item_ids": len(self["item_ids"]),
        }
        (data_dir / "metadata.json").write_text(json.dumps(summary))

    def load_metadata(self, data_dir: epath.PathLike) -> None:
        content = (epath.Path(data_dir) / RAW_IDS_FILE).read_bytes()
        with np.load(io.BytesIO(content), allow_pickle=False) as z:
            self.clear()
            self.update(
                user_ids=corpus_lib.unpack_raw_ids(z, "user_ids"),
                item_ids=corpus_lib.unpack_raw_ids(z, "item_ids"),
            )


@dataclasses.dataclass(kw_only=True)
class FileConfig(tfds.core.BuilderConfig):
    """One interaction file read with one set of options.

    Attributes:
      options: what to read and how (`config.file`).
    """

    options: file_options.FileOptions | None = None


def file_config(options: file_options.FileOptions) -> FileConfig:
    """The builder config of a file and its options (hashes the file's content).

    The key covers the file's whole content and every reading option, so an edited file, or
    other options, is a new config and is prepared anew; the same content under the same
    options reuses the prepared records.

    Args:
      options: the checked options.

    Returns:
      A config named `<file stem>-<16 hex digits of file_options.source_key>`.
    """
    path = options.path.rstrip("/")
    if parts.is_glob(path):  # the directory the glob starts from: ".../events/*.parquet"
        path = path[: min(path.find(c) for c in "*?[" if c in path)].rstrip("/")
    stem = epath.Path(path).name.rsplit(".", 1)[0]
    stem = re.sub(r"[^a-z0-9]+", "_", stem.lower()).strip("_")[:40] or "file"
    return FileConfig(
        name=f"{stem}-{file_options.source_key(options)}",
        description=f"Interactions from {options.path}.",
        options=options,
    )


class CustomInteractions(tfds.core.GeneratorBasedBuilder):
    """Your own interaction log as user sequences, in blocks of consecutive users.

    Example schema: `{"user_ids": int64 [users], "lengths": int64 [users], "items": int32
    [sum of lengths]}`, all stored as raw bytes: a block of users in ascending order, `items`
    holding their items one user after another, each oldest first. Ids are indices into the
    vocabularies of `RawIds`. With `file.timestamp_column` set, `"timestamps"`: float64 [sum of
    lengths] seconds aligned with `items` (2.1.0).
    """

    VERSION = tfds.core.Version("2.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        # A 200M-interaction log has ~1.4M users; TFDS encoding one example each (~70 us) and
        # every item one by one into the protobuf took more time than reading the log.
        "2.0.0": "Blocks of users per example, ids as raw bytes.",
        # The temporal split cuts at dates; 2.0.0 used the times for the order only. The
        # version is in the config's record path and the corpus cache's name, so a 2.0.0
        # cache (no times) is never read for a 2.1.0 request.
        "2.1.0": "Each interaction's time in seconds (float64) when the log has a timestamp.",
    }

    def _info(self) -> tfds.core.DatasetInfo:
        def tensor(dtype):
            return tfds.features.Tensor(shape=(None,), dtype=dtype, encoding="bytes")

        schema = {
            "user_ids": tensor(np.int64),
            "lengths": tensor(np.int64),
            "items": tensor(np.int32),
        }
        options = self.builder_config.options
        if options is not None and options.timestamp_column:
            schema["timestamps"] = tensor(np.float64)
        features = tfds.features.FeaturesDict(schema)
        return tfds.core.DatasetInfo(
            builder=self,
            disable_shuffling=True,  # the users' order (ascending) is kept
            description=self.__doc__,
            features=features,
            metadata=RawIds(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # the file is read where it is
        options = self.builder_config.options
        encoded = interactions.read_sequences(options)
        builders.check_evaluable(encoded.sequences, options.path)
        # Saved with the DatasetInfo, into the same temporary directory as the records, and
        # renamed into place with them.
        self.info.metadata.update(user_ids=encoded.user_ids, item_ids=encoded.item_ids)
        return {"train": blocks_of_users(encoded.sequences)}

    def _generate_examples(self, **kwargs):  # pragma: no cover - _split_generators yields them
        raise NotImplementedError


# Items per example: a few MB per record, a few hundred records for 200M interactions.
BLOCK_ITEMS = 1 << 20


def blocks_of_users(sequences: readers.Sequences, block_items: int = BLOCK_ITEMS):
    """Yields (key, example) pairs of `CustomInteractions`: consecutive users of about
    `block_items` items together (a longer user alone), keyed by the block's number."""
    offsets, times = sequences.offsets, sequences.timestamps
    for key, (first, end) in enumerate(ordering.user_chunks(offsets, block_items)):
        low, high = offsets[first], offsets[end]
        example = {
            "user_ids": np.asarray(sequences.raw_user_ids[first:end], np.int64),
            "lengths": np.diff(offsets[first : end + 1]),
            "items": np.asarray(sequences.raw_items[low:high], np.int32),
        }
        if times is not None:
            example["timestamps"] = np.asarray(times[low:high], np.float64)
        yield key, example
