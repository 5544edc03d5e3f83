"""Per-user results: every evaluated user's outcome on one held-out item, per protocol.

An `Evaluator` returns them (`Evaluator.user_results`); training and `evaluate` write them as a
Parquet file beside their aggregate results, so that any rank metric can be recomputed, users can
be grouped at will, and `compare` can pair two runs user by user. One row per user:

  user, raw_user         the corpus row of the user and the source's id
  target, raw_target     the held-out item (dense id, source's id)
  history_length         items before the target (the input history, before any window cut)
  target_known           whether any user trained on the target item
  <protocol>_rank        the target's 0-based pessimistic rank (`ranking.py`'s tie rule)
  <protocol>_num_candidates  items ranked: sampled ones, or the catalogue minus exclusions
  <protocol>_candidates  a 64-bit fingerprint of the candidate set (`set_fingerprints`)
  <protocol>_top         the top-k items, best first (dense ids, 0 = fewer candidates); only
                         where lists were asked for (the test split)

The file's metadata (`info`) names the data set, its corpus fingerprint, the split (`split_mode`
and which held-out item), the cut-offs, each protocol's settings and the run (model, step,
config hash). A split mode is only a field there: `compare` pairs whatever users, targets and
candidates two files share, whichever split made them. Numpy and pyarrow only (no JAX).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from etils import epath

from bert4rec_jax.atomic import write_atomically
from bert4rec_jax.evaluation import metrics as metrics_lib

FORMAT = 1  # the file layout's version, in its metadata
_METADATA_KEY = b"bert4rec_jax"
_COLUMNS = ("rank", "num_candidates", "candidates", "top")


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a well-spread uint64 for each value (uint64 arithmetic wraps)."""
    # Arrays only: numpy warns of the (intended) wrap-around in scalar arithmetic.
    z = np.asarray(x).astype(np.uint64).reshape(-1) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def set_fingerprints(rows: np.ndarray, items: np.ndarray, num_rows: int, salt: str) -> np.ndarray:
    """uint64 [num_rows]: an order-free fingerprint of each row's set of items.

    The sum (mod 2^64) of the mixed items, plus the mixed salt: equal sets give equal values in
    any order, different ones differ but with negligible chance. It identifies candidates, it does
    not protect against anyone crafting collisions.

    Args:
      rows: int [N], sorted; the row of each item.
      items: int [N]; the items, distinct within a row.
      num_rows: rows, empty ones included.
      salt: what else the candidates depend on, in words (the protocol, the exclusion rule).
    """
    salt_value = int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "little")
    sums = np.concatenate([np.zeros(1, np.uint64), np.cumsum(_mix(items), dtype=np.uint64)])
    bounds = np.searchsorted(rows, np.arange(num_rows + 1))
    return sums[bounds[1:]] - sums[bounds[:-1]] + _mix(np.array([salt_value], np.uint64))


@dataclasses.dataclass(frozen=True, eq=False)
class UserResults:
    """The outcome of every evaluated user on one held-out item, per protocol.

    Attributes:
      info: the metadata: "dataset", "corpus" (fingerprint), "split_mode", "split" (which held-out
        item), "num_items", "ks", "protocols" ({protocol: its settings}), and, once written by a
        run, "model", "step", "config_hash".
      users: int64 [n]; corpus rows of the users, in evaluation order.
      raw_users: [n]; the source's user ids (int64 or str).
      targets: int32 [n]; dense ids of the held-out items.
      raw_targets: [n]; the source's ids of the held-out items.
      history_lengths: int64 [n]; items before each target.
      target_known: bool [n]; whether any user trained on the target.
      ranks, num_candidates, candidates: {protocol: [n]}; 0-based pessimistic ranks (int64),
        items ranked (int64), candidate-set fingerprints (uint64).
      top: {protocol: int32 [n, K]}; the top-K items per user, best first; empty when no lists
        were made.
    """

    info: dict[str, Any]
    users: np.ndarray
    raw_users: np.ndarray
    targets: np.ndarray
    raw_targets: np.ndarray
    history_lengths: np.ndarray
    target_known: np.ndarray
    ranks: dict[str, np.ndarray]
    num_candidates: dict[str, np.ndarray]
    candidates: dict[str, np.ndarray]
    top: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def protocols(self) -> tuple[str, ...]:
        return tuple(self.ranks)

    @property
    def ks(self) -> tuple[int, ...]:
        return tuple(self.info["ks"])

    def metrics(self, ks: Sequence[int] | None = None) -> dict[str, float]:
        """The aggregate accuracy metrics, as `Evaluator.evaluate` returns them.

        Returns:
          {"<protocol>/hr@k", "<protocol>/ndcg@k", "<protocol>/mrr", "num_users"}; a temporal
          split adds "unseen_targets" (users whose target no one trained on: an item first
          seen after the training period, which no sequential model can rank from training)
          and the metrics over the other users, "seen/num_users" and "seen/<protocol>/...".
        """
        ks = self.ks if ks is None else tuple(ks)
        out: dict[str, float] = {}
        for protocol, ranks in self.ranks.items():
            for name, value in metrics_lib.ranking_metrics(ranks, ks).items():
                out[f"{protocol}/{name}"] = value
        out["num_users"] = float(len(self.users))
        if self.info.get("split_mode") == "temporal":
            seen = np.asarray(self.target_known, bool)
            out["unseen_targets"] = float((~seen).sum())
            out["seen/num_users"] = float(seen.sum())
            if seen.any():
                for protocol, ranks in self.ranks.items():
                    seen_ranks = np.asarray(ranks)[seen]
                    for name, value in metrics_lib.ranking_metrics(seen_ranks, ks).items():
                        out[f"seen/{protocol}/{name}"] = value
        return out

    def by_history(self) -> dict[str, float]:
        """The accuracy metrics per history-length bucket (`metrics.by_history`)."""
        return metrics_lib.by_history(self.ranks, self.history_lengths, self.ks)

    def beyond_accuracy(self, counts: np.ndarray, num_train_users: int) -> dict[str, float]:
        """ "<protocol>/coverage@k", "/popularity@k", "/novelty@k" of every protocol with lists.

        Args:
          counts, num_train_users: `metrics.training_popularity` of the corpus and split.
        """
        out = {}
        for protocol, top in self.top.items():
            for name, value in metrics_lib.beyond_accuracy(
                top, self.ks, counts, num_train_users
            ).items():
                out[f"{protocol}/{name}"] = value
        return out

    def metric_per_user(self, protocol: str, name: str) -> np.ndarray:
        """float64 [n]: one accuracy metric ("hr@k", "ndcg@k", "mrr") of each user."""
        if protocol not in self.ranks:
            raise ValueError(f"no {protocol!r} ranks here; the file has {list(self.ranks)}")
        return metrics_lib.per_user_metric(self.ranks[protocol], name)

    def with_info(self, **info: Any) -> UserResults:
        """A copy with more metadata (the run that made it: model, step, config hash)."""
        return dataclasses.replace(self, info={**self.info, **info})

    # ---- Parquet --------------------------------------------------------------------------

    def to_table(self) -> pa.Table:
        """The results as an Arrow table, one row per user, `info` in its metadata."""
        columns: dict[str, Any] = {
            "user": pa.array(self.users, pa.int64()),
            "raw_user": pa.array(self.raw_users.tolist()),
            "target": pa.array(self.targets, pa.int32()),
            "raw_target": pa.array(self.raw_targets.tolist()),
            "history_length": pa.array(self.history_lengths, pa.int64()),
            "target_known": pa.array(self.target_known, pa.bool_()),
        }
        for protocol in self.protocols:
            columns[f"{protocol}_rank"] = pa.array(self.ranks[protocol], pa.int64())
            columns[f"{protocol}_num_candidates"] = pa.array(
                self.num_candidates[protocol], pa.int64()
            )
            columns[f"{protocol}_candidates"] = pa.array(self.candidates[protocol], pa.uint64())
            if protocol in self.top:
                top = np.asarray(self.top[protocol], np.int32)
                columns[f"{protocol}_top"] = pa.FixedSizeListArray.from_arrays(
                    pa.array(top.reshape(-1), pa.int32()), top.shape[1]
                )
        info = {"format": FORMAT, **self.info}
        return pa.table(columns).replace_schema_metadata({_METADATA_KEY: json.dumps(info)})

    def write(self, path: epath.PathLike) -> None:
        """Writes the Parquet file atomically (any path epath writes: local or gs://)."""
        buffer = io.BytesIO()
        pq.write_table(self.to_table(), buffer)
        write_atomically(path, buffer.getvalue())

    @classmethod
    def from_table(cls, table: pa.Table, where: str = "the table") -> UserResults:
        """Reads what `to_table` made; `where` names the source in errors."""
        metadata = table.schema.metadata or {}
        if _METADATA_KEY not in metadata:
            raise ValueError(f"{where} is not a bert4rec_jax per-user results file (no metadata)")
        info = json.loads(metadata[_METADATA_KEY])
        if info.get("format") != FORMAT:
            raise ValueError(
                f"{where} has per-user format {info.get('format')}; this version reads {FORMAT}"
            )
        info.pop("format")

        def column(name: str) -> np.ndarray:
            if name not in table.column_names:
                raise ValueError(f"{where} has no column {name!r}")
            return table.column(name).to_numpy(zero_copy_only=False)

        per_protocol: dict[str, dict[str, np.ndarray]] = {c: {} for c in _COLUMNS}
        for protocol in info["protocols"]:
            for name in _COLUMNS:
                if name == "top" and f"{protocol}_top" not in table.column_names:
                    continue
                values = column(f"{protocol}_{name}")
                if name == "top":
                    values = np.stack(values).astype(np.int32) if len(values) else values
                per_protocol[name][protocol] = values
        return cls(
            info=info,
            users=column("user").astype(np.int64),
            raw_users=column("raw_user"),
            targets=column("target").astype(np.int32),
            raw_targets=column("raw_target"),
            history_lengths=column("history_length").astype(np.int64),
            target_known=column("target_known").astype(bool),
            ranks={p: v.astype(np.int64) for p, v in per_protocol["rank"].items()},
            num_candidates={
                p: v.astype(np.int64) for p, v in per_protocol["num_candidates"].items()
            },
            candidates={p: v.astype(np.uint64) for p, v in per_protocol["candidates"].items()},
            top=per_protocol["top"],
        )

    @classmethod
    def read(cls, path: epath.PathLike) -> UserResults:
        """Reads a per-user results file."""
        path = epath.Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such per-user results file")
        with path.open("rb") as f:
            data = f.read()
        try:
            table = pq.read_table(io.BytesIO(data))
        except pa.ArrowException as e:
            raise ValueError(f"{path} is not a readable Parquet file: {e}") from e
        return cls.from_table(table, str(path))
