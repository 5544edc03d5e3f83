"""Metrics from the evaluated users' outcomes, and the tables that print them.

Accuracy: HR@k, NDCG@k and MRR from the targets' ranks, also by history-length bucket. Beyond
accuracy, from each user's top-k list: catalogue coverage, the mean popularity percentile of the
recommended items and their novelty (mean self-information). Popularity is what the model could
know: the number of users with the item in their training sequence (`training_popularity`).
Numpy only: `compare` and `report` read these without JAX.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from bert4rec_jax.datasets.corpus import Corpus, Split

# History-length buckets (items before the target, inclusive bounds; None = no upper bound).
HISTORY_BUCKETS: tuple[tuple[int, int | None], ...] = ((1, 5), (6, 20), (21, 50), (51, None))


def bucket_name(bucket: tuple[int, int | None]) -> str:
    """ "1-5", "6-20", ..., "51+": the bucket's name in result keys ("history=1-5/...")."""
    low, high = bucket
    return f"{low}+" if high is None else f"{low}-{high}"


def per_user_metric(ranks: np.ndarray, name: str) -> np.ndarray:
    """float64 [num_users]: one accuracy metric per user from the 0-based ranks.

    Args:
      ranks: int [num_users]; the number of candidates ranked above each target.
      name: "hr@k", "ndcg@k" or "mrr".
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    if name == "mrr":
        return 1.0 / (ranks + 1.0)
    kind, _, k = name.partition("@")
    if kind not in ("hr", "ndcg") or not k.isdigit() or int(k) < 1:
        raise ValueError(f"unknown metric {name!r}: use hr@k, ndcg@k (k >= 1) or mrr")
    hit = ranks < int(k)
    if kind == "hr":
        return hit.astype(np.float64)
    return np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10, 20)) -> dict[str, float]:
    """HR@k, NDCG@k and MRR from the targets' 0-based ranks, averaged over users.

    With one relevant item per user: HR@k = 1[rank < k], NDCG@k = 1[rank < k] / log2(rank + 2),
    MRR = 1 / (rank + 1) over all candidates (no cut-off). A k larger than the number of
    candidates counts every user. Ranks come from the pessimistic tie rule (see the module doc).

    Args:
      ranks: int [num_users]; the number of candidates ranked above each target.
      ks: cut-offs.

    Returns:
      {"hr@k": ..., "ndcg@k": ... for each k, "mrr": ...}; NaN when there are no users.
    """
    ranks = np.asarray(ranks)
    if (ranks < 0).any():
        raise ValueError("ranks must be non-negative")
    mean = lambda x: float(np.mean(x)) if len(x) else float("nan")
    names = [f"{m}@{k}" for k in ks for m in ("hr", "ndcg")] + ["mrr"]
    return {name: mean(per_user_metric(ranks, name)) for name in names}


def by_history(
    ranks: Mapping[str, np.ndarray], history_lengths: np.ndarray, ks: Sequence[int]
) -> dict[str, float]:
    """The accuracy metrics of each history-length bucket (`HISTORY_BUCKETS`).

    Args:
      ranks: {protocol: int [num_users] ranks}.
      history_lengths: int [num_users]; items before each user's target.
      ks: cut-offs.

    Returns:
      {"history=<bucket>/num_users": users in the bucket, and for a bucket that has users
       "history=<bucket>/<protocol>/<metric>": its mean}.
    """
    lengths = np.asarray(history_lengths)
    out: dict[str, float] = {}
    for bucket in HISTORY_BUCKETS:
        low, high = bucket
        inside = (lengths >= low) & (lengths <= (high if high is not None else np.inf))
        prefix = f"history={bucket_name(bucket)}"
        out[f"{prefix}/num_users"] = float(inside.sum())
        if not inside.any():
            continue  # no NaN in the results files: an empty bucket has its count only
        for protocol, protocol_ranks in ranks.items():
            for name, value in ranking_metrics(np.asarray(protocol_ranks)[inside], ks).items():
                out[f"{prefix}/{protocol}/{name}"] = value
    return out


def training_popularity(corpus: Corpus, split: Split) -> tuple[np.ndarray, int]:
    """How many users have each item in their training sequence, and how many users train.

    Training sequences are what the model learned from (`split.train_ends`), so the counts say
    what it could know, not what the held-out targets add.

    Returns:
      (int64 [num_items + 1] users per item ([0] = 0), the number of users with a training item).
    """
    rows = np.repeat(np.arange(corpus.num_users, dtype=np.int64), corpus.lengths)
    trained = np.arange(corpus.num_interactions) < split.train_ends[rows]
    stride = corpus.num_items + 1
    # An item seen twice by one user counts once: popularity is a share of users.
    pairs = np.unique(rows[trained] * stride + corpus.items[trained])
    counts = np.bincount(pairs % stride, minlength=stride).astype(np.int64)
    return counts, len(np.unique(rows[trained]))


def popularity_percentiles(counts: np.ndarray) -> np.ndarray:
    """float64 [num_items + 1]: each item's popularity percentile among items 1..V ([0] = 0).

    The mid-rank percentile: 100 * (items less popular + half the items as popular, itself
    included) / V, so that ties share one value, a catalogue of equals sits at 50 and the single
    most popular item is near 100.
    """
    catalogue = np.asarray(counts[1:], dtype=np.int64)
    ordered = np.sort(catalogue)
    below = np.searchsorted(ordered, catalogue, side="left")
    equal = np.searchsorted(ordered, catalogue, side="right") - below
    out = np.zeros(len(counts), dtype=np.float64)
    out[1:] = 100.0 * (below + 0.5 * equal) / max(len(catalogue), 1)
    return out


def beyond_accuracy(
    top: np.ndarray, ks: Sequence[int], counts: np.ndarray, num_train_users: int
) -> dict[str, float]:
    """Coverage, popularity percentile and novelty of the users' top-k lists, at each k.

    coverage@k: distinct items in the top-k lists of all users, as a share of the catalogue.
    popularity@k: the mean popularity percentile (`popularity_percentiles`) of the listed items.
    novelty@k: their mean self-information, log2(training users / users with the item); an item
      no user trained on counts as seen by one (the largest finite value, not infinity).
    Means are over every listed item; padding (0: fewer than k candidates) is not an item.

    Args:
      top: int [num_users, K]; each user's recommended items, best first, K >= max(ks).
      ks: cut-offs.
      counts: int [num_items + 1]; users per item (`training_popularity`).
      num_train_users: users with a training item.

    Returns:
      {"coverage@k", "popularity@k", "novelty@k" for each k}; NaN means where nothing is listed.
    """
    top = np.asarray(top)
    counts = np.asarray(counts)
    if len(ks) and max(ks) > top.shape[1]:
        raise ValueError(f"top-k lists of {top.shape[1]} items cannot give k={max(ks)}")
    percentile = popularity_percentiles(counts)
    information = np.log2(max(num_train_users, 1) / np.maximum(counts, 1).astype(np.float64))
    num_items = len(counts) - 1
    out = {}
    for k in ks:
        listed = top[:, :k]
        listed = listed[listed > 0]
        mean = (lambda x: float(np.mean(x))) if len(listed) else (lambda x: float("nan"))
        out[f"coverage@{k}"] = len(np.unique(listed)) / max(num_items, 1)
        out[f"popularity@{k}"] = mean(percentile[listed])
        out[f"novelty@{k}"] = mean(information[listed])
    return out


ACCURACY = ("hr", "ndcg", "mrr")
BEYOND_ACCURACY = ("coverage", "popularity", "novelty")


def _metric_kind(key: str) -> str:
    """ "hr" for "pop100/hr@10", "coverage" for "full/coverage@5"; "" for other keys."""
    if key.startswith("history=") or key.count("/") != 1:
        return ""
    return key.split("/", 1)[1].partition("@")[0]


def accuracy_metrics(results: Mapping[str, float]) -> dict[str, float]:
    """The "<protocol>/<hr@k, ndcg@k, mrr>" entries of a results dict (the headline table)."""
    return {k: v for k, v in results.items() if _metric_kind(k) in ACCURACY}


def format_beyond_table(results: Mapping[str, float]) -> str:
    """A text table of the beyond-accuracy entries: a row per (protocol, k), a column per metric."""
    rows = {}
    for key, value in results.items():
        if _metric_kind(key) in BEYOND_ACCURACY:
            protocol, metric = key.split("/")
            name, k = metric.split("@")
            rows[f"{protocol}@{k}/{name}"] = value
    return format_table(rows) if rows else "(no top-k lists)"


def format_history_table(results: Mapping[str, float]) -> str:
    """A text table of the "history=<bucket>/..." entries: a row per (protocol, bucket)."""
    rows: dict[str, float] = {}
    for key, value in results.items():
        if not key.startswith("history="):
            continue
        bucket, rest = key.removeprefix("history=").split("/", 1)
        if rest == "num_users":
            continue
        protocol, metric = rest.split("/", 1)
        rows[f"{protocol}:{bucket}/users"] = results[f"history={bucket}/num_users"]
        rows[f"{protocol}:{bucket}/{metric}"] = value
    return format_table(rows, integer_columns=("users",)) if rows else "(no users)"


def format_table(results: Mapping[str, float], integer_columns: Sequence[str] = ()) -> str:
    """A text table of `Evaluator.evaluate`'s results: one row per protocol, one column per metric.

    Args:
      results: keys like "pop100/ndcg@10" (others, e.g. "num_users", go under the table).
      integer_columns: metrics printed as integers (counts), first.

    Returns:
      The table.
    """
    rows: dict[str, dict[str, float]] = {}
    columns: list[str] = []
    extra = []
    for key, value in results.items():
        if "/" not in key:
            extra.append(f"{key}: {value:g}")
            continue
        protocol, metric = key.split("/", 1)
        rows.setdefault(protocol, {})[metric] = value
        if metric not in columns:
            columns.append(metric)

    def order(metric: str) -> tuple[int, int]:
        name, _, k = metric.partition("@")
        group = {"hr": 0, "ndcg": 1, "mrr": 2, "coverage": 3, "popularity": 4, "novelty": 5}
        group = -1 if metric in integer_columns else group.get(name, 6)
        return group, int(k) if k.isdigit() else 0

    def cell(metrics: dict[str, float], column: str) -> str:
        if column not in metrics:
            return "-"
        value = metrics[column]
        return f"{value:.0f}" if column in integer_columns else f"{value:.4f}"

    columns.sort(key=order)
    width = max([len(c) for c in columns] + [6]) + 2
    first = max([len(p) for p in rows] + [len("protocol")]) + 2
    lines = ["protocol".ljust(first) + "".join(c.rjust(width) for c in columns)]
    for protocol, metrics in rows.items():
        cells = (cell(metrics, c) for c in columns)
        lines.append(protocol.ljust(first) + "".join(cell.rjust(width) for cell in cells))
    return "\n".join(lines + extra)
