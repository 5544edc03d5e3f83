"""Ranking metrics: HR@k, NDCG@k and MRR from the targets' ranks, and the results table."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
    ranks = np.asarray(ranks, dtype=np.float64)
    if (ranks < 0).any():
        raise ValueError("ranks must be non-negative")
    mean = lambda x: float(np.mean(x)) if len(x) else float("nan")
    out = {}
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = mean(hit)
        out[f"ndcg@{k}"] = mean(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0))
    out["mrr"] = mean(1.0 / (ranks + 1.0))
    return out


def format_table(results: dict[str, float]) -> str:
    """A text table of `Evaluator.evaluate`'s results: one row per protocol, one column per metric.

    Args:
      results: keys like "pop100/ndcg@10" (others, e.g. "num_users", go under the table).

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
        group = {"hr": 0, "ndcg": 1, "mrr": 2}.get(name, 3)
        return group, int(k) if k.isdigit() else 0

    columns.sort(key=order)
    width = max([len(c) for c in columns] + [6]) + 2
    first = max([len(p) for p in rows] + [len("protocol")]) + 2
    lines = ["protocol".ljust(first) + "".join(c.rjust(width) for c in columns)]
    for protocol, metrics in rows.items():
        cells = (f"{metrics[c]:.4f}" if c in metrics else "-" for c in columns)
        lines.append(protocol.ljust(first) + "".join(cell.rjust(width) for cell in cells))
    return "\n".join(lines + extra)
