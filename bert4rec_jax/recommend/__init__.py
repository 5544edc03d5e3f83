"""Top-k recommendations for histories of raw item ids, from an exported model.

recommender.py  `Recommender`: load and check an artifact, run it on batches of histories
ids.py          raw item ids -> dense ids, raw user ids -> user rows, per-history status
files.py        the job's inputs (JSON lines, CSV, interaction tables) and outputs, streamed
job.py          serving many users chunk by chunk, with counts and a progress bar
__main__.py     the command line (`python -m bert4rec_jax.recommend`; usage in its docstring)

  rec = Recommender.load("/tmp/bert4rec_export")
  result = rec.recommend([[12, 7, 33], [5, 8], []], k=10)
"""

from bert4rec_jax.recommend.files import (
    InputFileError,
    OutputWriter,
    Record,
    input_kind,
    input_size,
    iter_histories,
    iter_interactions,
    read_histories,
)
from bert4rec_jax.recommend.ids import (
    NO_ITEM_IDS,
    NO_KNOWN_ITEM_IDS,
    EmptyHistoryError,
    EncodedHistories,
    IdMap,
    UnknownItemError,
)
from bert4rec_jax.recommend.job import (
    DEFAULT_CHUNK_USERS,
    JobSummary,
    Progress,
    recommend_all,
    workdir_users,
)
from bert4rec_jax.recommend.recommender import DEFAULT_BATCH_SIZE, Recommendations, Recommender

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CHUNK_USERS",
    "NO_ITEM_IDS",
    "NO_KNOWN_ITEM_IDS",
    "EmptyHistoryError",
    "EncodedHistories",
    "IdMap",
    "InputFileError",
    "JobSummary",
    "OutputWriter",
    "Progress",
    "Record",
    "Recommendations",
    "Recommender",
    "UnknownItemError",
    "input_kind",
    "input_size",
    "iter_histories",
    "iter_interactions",
    "read_histories",
    "recommend_all",
    "workdir_users",
]
