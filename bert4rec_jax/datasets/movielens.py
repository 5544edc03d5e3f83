"""TFDS builder for MovieLens 100K / 1M / 20M turned into sequences from the raw ratings
(`ml-100k-raw`, ...): the rules and where the release comes from are in `MovielensSequences`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from bert4rec_jax.datasets import builders, features, hashes, readers

BASE_URL_ENV = "BERT4REC_MOVIELENS_BASE_URL"
DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens"
FEATURES_FILE = "features.npz"
# Key prefixes in FEATURES_FILE: "<kind>_ids" holds the raw ids, "<kind>__<name>" a feature.
_KINDS = ("item", "user")


class SideFeatures(tfds.core.Metadata):
    """Item and user features by raw id, saved as one `.npz` beside the records.

    Keys: "item" and "user", each a `features.RawFeatures` or None. As `custom.RawIds`, a small
    `metadata.json` is written too: TFDS restores a custom `Metadata` only when that file exists.
    """

    def save_metadata(self, data_dir: epath.PathLike) -> None:
        data_dir = epath.Path(data_dir)
        arrays = {}
        for kind in _KINDS:
            raw = self.get(kind)
            if raw is not None:
                arrays[f"{kind}_ids"] = raw.raw_ids
                arrays.update({f"{kind}__{k}": v for k, v in raw.features.items()})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        (data_dir / FEATURES_FILE).write_bytes(buffer.getvalue())
        summary = {k: sorted(self[k].features) if self.get(k) else [] for k in _KINDS}
        summary["features_file"] = FEATURES_FILE
        (data_dir / "metadata.json").write_text(json.dumps(summary))

    def load_metadata(self, data_dir: epath.PathLike) -> None:
        content = (epath.Path(data_dir) / FEATURES_FILE).read_bytes()
        self.clear()
        with np.load(io.BytesIO(content), allow_pickle=False) as z:
            for kind in _KINDS:
                if f"{kind}_ids" in z.files:
                    prefix = f"{kind}__"
                    self[kind] = features.RawFeatures(
                        raw_ids=z[f"{kind}_ids"],
                        features={
                            k.removeprefix(prefix): z[k] for k in z.files if k.startswith(prefix)
                        },
                    )
                else:
                    self[kind] = None


@dataclasses.dataclass(kw_only=True)
class MovieLensConfig(tfds.core.BuilderConfig):
    """One MovieLens release.

    Attributes:
      variant: "100k", "1m" or "20m" (a key of `readers.MOVIELENS_FILES`).
    """

    variant: str = ""

    @property
    def release(self) -> str:
        return f"ml-{self.variant}"


def verify_release(path: os.PathLike, url_info, name: str) -> None:
    """Raises `readers.ChecksumError` unless the file has the registered size and sha256."""
    size = epath.Path(path).stat().length
    if size != int(url_info.size):
        raise readers.ChecksumError(name, "size", f"{int(url_info.size)} bytes", f"{size} bytes")
    actual = hashes.sha256_file(path)
    if actual != url_info.checksum:
        raise readers.ChecksumError(name, "sha256", url_info.checksum, actual)


class MovielensSequences(tfds.core.GeneratorBasedBuilder):
    """MovieLens ratings as time-ordered user sequences.

    `movielens_sequences` (configs `100k`, `1m`, `20m`; `load_corpus` calls them `ml-100k-raw`,
    `ml-1m-raw`, `ml-20m-raw`) reads the GroupLens release's ratings file (`ml-100k/u.data`, tab
    separated; `ml-1m/ratings.dat`, `::` separated; `ml-20m/ratings.csv`, with a header) and builds
    the paper's sequences: every rating is an interaction, each user's ratings are sorted by
    (timestamp, raw item id) (the item id breaks ties between ratings with the same timestamp,
    a fixed rule so the result never depends on the file's line order), and users with fewer
    than 5 ratings are dropped (`readers.MIN_USER_INTERACTIONS`). Item ids are remapped later, by
    `corpus_from_sequences`.

    Where the release comes from:

    * Offline: if the manual directory exists and is not empty, it must hold either the zip
      (`ml-100k.zip`) or the extracted folder (`ml-100k/u.data`); nothing is downloaded. As for the
      paper's files, `load_corpus` prepares a manual copy under a config named after its content
      (`builders.manual_config`), so a replaced copy is noticed.
    * Online: `<base>/ml-100k.zip`, where `<base>` is the environment variable
      `BERT4REC_MOVIELENS_BASE_URL` if set, else `DEFAULT_BASE_URL`. The download is checked
      against the size and sha256 in this package's `checksums.tsv` (the GroupLens URLs, TFDS's
      format) whatever the base URL; on a mismatch it is deleted and `readers.ChecksumError` is
      raised. An unreachable server fails at once with `readers.SourceUnavailableError` (see
      `builders.download_and_verify`).

    Example schema: as every builder of the project (`builders.sequence_info`), one example per user
    `{"user_id": int64, "items": Tensor(shape=(None,), int64)}`, raw ids, items oldest first, plus
    `"timestamps"` (1.2.0): the ratings' unix seconds, aligned with `items`.

    Side features (1.1.0): for 100K, the movies' genres and release-year buckets (`u.item`) and the
    users' age bucket, gender and occupation (`u.user`), read from the same release as the ratings
    (`features.read_movielens_100k_items` / `_users`), are saved beside the records by raw id
    (`SideFeatures`, `features.npz`); `load_corpus` aligns them with the corpus's dense ids. 1M and
    20M carry none yet (their `movies.dat` / `users.dat` have other layouts).
    """

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "ML-100K item (genre, year) and user (age, gender, occupation) features.",
        # The temporal split cuts the data at dates; 1.1.0's records kept only the order. The
        # version is part of the corpus cache's name, so a 1.1.0 cache (no times) is never
        # read as if it had none to give.
        "1.2.0": "Each rating's timestamp (unix seconds) beside its item.",
    }
    BUILDER_CONFIGS = [
        MovieLensConfig(
            name=variant,
            description=f"MovieLens {variant.upper()} ratings as sequences ordered by time.",
            variant=variant,
        )
        for variant in readers.MOVIELENS_FILES
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Optional: to work offline, put the GroupLens release (ml-100k.zip, or its extracted "
        f"ml-100k/ folder; likewise ml-1m, ml-20m) from {DEFAULT_BASE_URL} in the manual directory."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return builders.sequence_info(
            self,
            __doc__,
            homepage="https://grouplens.org/datasets/movielens/",
            citation=(
                "@article{harper2015movielens, title={The MovieLens Datasets: History and "
                "Context}, author={Harper, F. Maxwell and Konstan, Joseph A.}, journal={ACM TiiS},"
                " year={2015}}"
            ),
            metadata=SideFeatures(),
            timestamps=True,
        )

    @classmethod
    def manual_source(cls, config: MovieLensConfig, manual_dir: epath.PathLike) -> epath.Path:
        """The ratings file (`ml-100k/u.data`) or, failing that, the zip in a manual directory.

        Raises:
          readers.DataFormatError: the directory holds neither.
        """
        manual_dir = epath.Path(manual_dir)
        member = manual_dir / readers.MOVIELENS_FILES[config.variant][0]
        if member.is_file():
            return member
        archive = manual_dir / f"{config.release}.zip"
        if not archive.is_file():
            raise readers.DataFormatError(
                str(member), None, f"file not found (nor {archive.name}) in the manual directory"
            )
        return archive

    def _source(self, dl_manager: tfds.download.DownloadManager) -> epath.Path:
        config = self.builder_config
        zip_name = f"{config.release}.zip"
        canonical_url = f"{DEFAULT_BASE_URL}/{zip_name}"
        url_info = (self.url_infos or {}).get(canonical_url)
        if url_info is None:  # the package is broken, not the data
            raise RuntimeError(f"no checksum registered for {canonical_url} in checksums.tsv")
        manual_dir = builders.manual_dir_or_none(dl_manager)
        if manual_dir is not None:
            source = self.manual_source(config, manual_dir)
            if source.name == zip_name:
                try:
                    verify_release(source, url_info, str(source))
                except readers.ChecksumError as e:
                    logging.warning("%s; using it anyway", e)
            logging.info("Reading %s from the manual directory %s", source, manual_dir)
            return source
        base = os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        url = f"{base.rstrip('/')}/{zip_name}"
        member = readers.MOVIELENS_FILES[config.variant][0]
        return builders.download_and_verify(
            dl_manager,
            url,
            lambda path: verify_release(path, url_info, url),
            filename=zip_name,
            advice=builders.offline_advice(
                f"ml-{config.variant}-raw", zip_name, url, BASE_URL_ENV, f"its extracted {member}"
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        source = self._source(dl_manager)
        sequences = readers.read_movielens_ratings(source, self.builder_config.variant)
        logging.info(
            "Parsed MovieLens %s: %d users with >= %d ratings, %d interactions",
            self.builder_config.variant,
            sequences.num_users,
            readers.MIN_USER_INTERACTIONS,
            len(sequences.raw_items),
        )
        builders.check_evaluable(sequences, str(source))
        # Saved with the DatasetInfo, into the same temporary directory as the records.
        self.info.metadata.update(item=None, user=None)
        if self.builder_config.variant == "100k":
            # Optional: a copy holding only u.data still gives the ratings (then no features).
            self.info.metadata.update(
                item=features.read_movielens_100k_items(source, missing_ok=True),
                user=features.read_movielens_100k_users(source, missing_ok=True),
            )
            for kind in ("item", "user"):
                if self.info.metadata[kind] is None:
                    logging.warning("No u.%s beside %s: no %s features", kind, source, kind)
        return {"train": builders.examples_from_sequences(sequences)}

    def _generate_examples(self, **kwargs):  # pragma: no cover - _split_generators yields them
        raise NotImplementedError
