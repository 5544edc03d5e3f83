"""Jobs over many users: chunks served while the next is read, counts, and a progress bar."""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from bert4rec_jax.progress import ProgressLine
from bert4rec_jax.recommend.files import OutputWriter, Record
from bert4rec_jax.recommend.ids import EncodedHistories
from bert4rec_jax.recommend.recommender import Recommender

# Users read, encoded and written together by the file-to-file jobs (memory per chunk, not per job).
DEFAULT_CHUNK_USERS = 4096


class Progress:
    """A progress bar on stderr: a redrawn line on a terminal, plain lines every 10 s otherwise
    (a log file gets no carriage returns or escape codes); `progress.ProgressLine`'s rules."""

    def __init__(self, total: int | None, unit: str, stream: TextIO | None = None):
        self.line = ProgressLine(total, unit, stream)

    def update(self, done: int, users: int, final: bool = False) -> None:
        """Shows `done` of `total` input units read and `users` users served so far."""
        if self.line.due(done, final):
            detail = f"{users:,} users, {users / self.line.elapsed:,.0f}/s"
            self.line.update(done, detail, final)


@dataclasses.dataclass
class JobSummary:
    """Counts of a job over many users."""

    users: int = 0
    served: int = 0
    unknown_ids: int = 0
    errors: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    seconds: float = 0.0

    def text(self) -> str:
        failed = sum(self.errors.values())
        why = ", ".join(f"{n:,} {error}" for error, n in sorted(self.errors.items()))
        return (
            f"{self.users:,} users: {self.served:,} served, {failed:,} without recommendations"
            + (f" ({why})" if why else "")
            + f"; {self.unknown_ids:,} unknown item ids skipped; "
            f"{self.users / max(self.seconds, 1e-9):,.0f} users/s"
        )


def recommend_all(
    recommender: Recommender,
    records: Iterable[tuple[Record, int]],
    writer: OutputWriter,
    k: int,
    *,
    exclude_seen: bool = True,
    strict: bool = False,
    chunk_users: int = DEFAULT_CHUNK_USERS,
    progress: Progress | None = None,
) -> JobSummary:
    """Serves a stream of users chunk by chunk, writing each chunk before reading the next.

    Args:
      recommender: the model.
      records: ((raw user id, history, label), input units read so far) per user.
      writer: where the rows go, one per user in order.
      k: items per user.
      exclude_seen: never return an item of the history.
      strict: stop at the first unknown id or empty history (raising, naming it).
      chunk_users: users per chunk: memory holds one chunk.
      progress: shown after each chunk.

    Returns:
      The job's counts.
    """
    recommender.check_k(k)
    summary = JobSummary()
    start = time.monotonic()
    chunk: list[Record] = []
    done = 0
    # A chunk whose batches run while the next chunk is read and mapped and this one's rows
    # are written: the model (on jax's threads) and that Python work overlap, and the model
    # does not wait between chunks. The results are `recommend`'s, chunk by chunk.
    in_flight: tuple[list[Any], EncodedHistories, list[Any], int] | None = None

    def begin(chunk: list[Record], done: int) -> tuple[list[Any], EncodedHistories, list, int]:
        users = [r[0] for r in chunk]
        encoded = recommender.encode(
            [r[1] for r in chunk], users=users, strict=strict, labels=[r[2] for r in chunk]
        )
        return users, encoded, recommender.start(encoded, exclude_seen), done

    def finish(flight: tuple[list[Any], EncodedHistories, list, int]) -> None:
        users, encoded, pending, done = flight
        result = recommender.collect(encoded, pending, k)
        writer.write(users, result)
        summary.users += len(users)
        summary.served += len(users) - result.num_failed
        summary.unknown_ids += result.num_unknown
        summary.errors.update(e for e in result.errors if e is not None)
        if progress is not None:
            progress.update(done, summary.users)

    def advance(chunk: list[Record], done: int) -> None:
        nonlocal in_flight
        started = begin(chunk, done)
        flight, in_flight = in_flight, None
        if flight is not None:
            finish(flight)
        in_flight = started

    try:
        for record, done in records:
            chunk.append(record)
            if len(chunk) >= chunk_users:
                advance(chunk, done)
                chunk = []
        if chunk:
            advance(chunk, done)
    except Exception:
        # A bad line or (strict) a bad user: the users before it are written, as when
        # chunks ran one after the other.
        flight, in_flight = in_flight, None
        if flight is not None:
            finish(flight)
        raise
    if in_flight is not None:
        finish(in_flight)
    summary.seconds = time.monotonic() - start
    if progress is not None:
        progress.update(done, summary.users, final=True)
    return summary


def workdir_users(
    workdir: str, data_dir: str | None = None
) -> tuple[Iterator[tuple[Record, int]], int]:
    """Every user of a training run's corpus, whole sequences as raw ids: (records, users)."""
    from bert4rec_jax import experiment  # the data sets: only here
    from bert4rec_jax import workdir as workdir_lib
    from bert4rec_jax.config import RunConfig

    _, config = workdir_lib.open_run(workdir, data_dir=data_dir)
    corpus = experiment.Experiment.from_run(RunConfig.from_config_dict(config)).corpus

    def records() -> Iterator[tuple[Record, int]]:
        raw_items = corpus.raw_item_ids
        for u in range(corpus.num_users):
            user = corpus.raw_user_ids[u].item()
            yield (user, raw_items[corpus.sequence(u)], f"{workdir} user {user!r}"), u + 1

    return records(), corpus.num_users
