"""TFDS builder for the BERT4Rec paper's four preprocessed data sets (beauty, steam, ml-1m,
ml-20m): one example per user; where the file comes from is in `Bert4recPaper`'s docstring.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from bert4rec_jax.datasets import builders, hashes, readers

BASE_URL_ENV = "BERT4REC_PAPER_BASE_URL"
DEFAULT_BASE_URL = "https://raw.githubusercontent.com/FeiSun/BERT4Rec/master/data"

# config name -> (file name in the repository and the manual dir, its git blob id).
PAPER_FILES = {
    "beauty": ("beauty.txt", "16718a33ebdb33504f257421b18ae8bf3ddfe327"),
    "steam": ("steam.txt", "d277c3a119f12764dc2822eca9684949a516b244"),
    "ml-1m": ("ml-1m.txt", "9ab8e3edb8742f8d8cc4911e3dee25e82a6fcc24"),
    "ml-20m": ("ml-20m.zip", "94df4e7735d9776c21561168b6ee437bf969335a"),
}


@dataclasses.dataclass(kw_only=True)
class PaperConfig(tfds.core.BuilderConfig):
    """One of the paper's files.

    Attributes:
      filename: its name in the authors' repository and in the manual directory.
      blob_id: its git blob id.
    """

    filename: str = ""
    blob_id: str = ""


class Bert4recPaper(tfds.core.GeneratorBasedBuilder):
    """The BERT4Rec paper's preprocessed data sets, one TFDS example per user.

    The paper's authors published their preprocessed files in their repository: `beauty.txt`,
    `steam.txt`, `ml-1m.txt` and `ml-20m.zip` (a zip holding one text file of the same format), one
    `<user> <item>` pair per line, each user's lines contiguous and oldest first. This builder
    (`bert4rec_paper`, configs `beauty`, `steam`, `ml-1m`, `ml-20m`) turns one of them into one TFDS
    example per user.

    Where the file comes from:

    * Offline: if the manual directory (`tfds.download.DownloadConfig(manual_dir=...)`) exists and
      is not empty, the file is read from there (`<manual_dir>/beauty.txt` etc.; for ML-20m either
      `ml-20m.zip` or its extracted `ml-20m.txt`) and nothing is downloaded. A manual copy whose git
      blob id differs from the official file's is used with a warning, so that edited or trimmed
      copies still work. `load_corpus` prepares a manual copy under its own config
      (`beauty-manual-<content key>`, see `manual_config`), so that a replaced copy is prepared
      anew.
    * Online: the file is downloaded from `<base>/<file>`, where `<base>` is the environment
      variable `BERT4REC_PAPER_BASE_URL` if set (a mirror, or a local server in tests), else
      `DEFAULT_BASE_URL`. The download is verified by its git blob id (sha1 of b"blob <size>\\0" +
      content, the id GitHub shows; TFDS's own registry wants a sha256, which the authors never
      published). On a mismatch the downloaded file is deleted and `readers.ChecksumError` names the
      file, the expected and the actual id. When the source cannot be reached at all (no network),
      `readers.SourceUnavailableError` says so within seconds, with the way to work offline, instead
      of TFDS retrying for minutes (`download_and_verify`).

    Examples follow the schema every builder of the project shares (`builders.sequence_info`).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        PaperConfig(
            name=name,
            description=f"The paper's {filename}, one example per user.",
            filename=filename,
            blob_id=blob_id,
        )
        for name, (filename, blob_id) in PAPER_FILES.items()
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Optional: to work offline, put the paper's files (beauty.txt, steam.txt, ml-1m.txt, "
        f"ml-20m.zip) from {DEFAULT_BASE_URL} in the manual directory."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return builders.sequence_info(
            self,
            __doc__,
            homepage="https://github.com/FeiSun/BERT4Rec",
            citation=(
                "@inproceedings{sun2019bert4rec, title={BERT4Rec: Sequential Recommendation with "
                "Bidirectional Encoder Representations from Transformer}, author={Sun, Fei and "
                "others}, booktitle={CIKM}, year={2019}}"
            ),
        )

    @classmethod
    def manual_source(cls, config: PaperConfig, manual_dir: epath.PathLike) -> epath.Path:
        """The file of `config` in a manual directory.

        Raises:
          readers.DataFormatError: the directory does not hold it.
        """
        manual_dir = epath.Path(manual_dir)
        path = manual_dir / config.filename
        # ml-20m.zip may also be given extracted, as ml-20m.txt: GroupLens' own release is
        # called ml-20m.zip too, and one manual directory cannot hold both zips.
        extracted = manual_dir / f"{config.filename.rsplit('.', 1)[0]}.txt"
        if not path.is_file() and path != extracted and extracted.is_file():
            return extracted
        if not path.is_file():
            raise readers.DataFormatError(
                str(path), None, f"file not found (offline copy of {config.filename})"
            )
        return path

    def _source(self, dl_manager: tfds.download.DownloadManager) -> epath.Path:
        config = self.builder_config
        manual_dir = builders.manual_dir_or_none(dl_manager)
        if manual_dir is not None:
            path = self.manual_source(config, manual_dir)
            if path.name == config.filename:
                actual = hashes.git_blob_id(path)
                if actual != config.blob_id:
                    logging.warning(
                        "%s is not the official %s (git blob id %s, official %s); using it anyway",
                        path,
                        config.filename,
                        actual,
                        config.blob_id,
                    )
            logging.info("Reading %s from the manual directory %s", path.name, manual_dir)
            return path
        base = os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        url = f"{base.rstrip('/')}/{config.filename}"
        return builders.download_and_verify(
            dl_manager,
            url,
            lambda path: builders.verify_blob_id(path, config.blob_id, url),
            filename=config.filename,
            advice=builders.offline_advice(config.name, config.filename, url, BASE_URL_ENV),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        path = self._source(dl_manager)
        sequences = readers.read_paper_file(path)
        logging.info(
            "Parsed %s: %d users, %d interactions",
            path,
            sequences.num_users,
            len(sequences.raw_items),
        )
        builders.check_evaluable(sequences, str(path))
        return {"train": builders.examples_from_sequences(sequences)}

    def _generate_examples(self, **kwargs):  # pragma: no cover - _split_generators yields them
        raise NotImplementedError
