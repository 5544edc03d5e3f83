"""Leave-one-out evaluation: inputs, candidates (pop100, uniform100, full), HR@k, NDCG@k and MRR.

Every evaluated user (see `corpus.leave_one_out`) is scored once per split ("valid" or "test"):

* Input: the user's history (validation: the training items; test: training + validation items),
  truncated to its last `max_len - 1` items, then [MASK]; padding 0 after it (the original code pads
  at the end too). The model's hidden state at the [MASK] position scores the candidates.
* Candidates, int32 [num_eval, 1 + num_negatives] with the target in column 0:
  - "pop100": `num_negatives` negatives drawn by popularity (counts over the full sequences, as the
    original), without replacement, never an item of the user's full sequence (every item the user
    ever interacted with, held-out ones included, as the original) nor the target.
  - "uniform100": the same with every item equally likely.
  - "full": every item of the catalogue; with `exclude_history` the user's input history (all of
    it, not only the last max_len - 1 items) is dropped, the target always kept. Padding (0) and
    [MASK] (V + 1) are never candidates. Scored on device in item chunks, never materialising a
    users x items matrix larger than one [batch, item_chunk] block.
  The sampled protocols' names keep the paper's "100" whatever `num_negatives` is. Their draw is
  seeded and saved to a cache directory once per (data set, split mode, split, protocol,
  num_negatives, seed), so every run and every model is judged on the same candidates. A user with
  fewer than num_negatives items outside their sequence (tiny catalogues) is ranked against all of
  them: the rest of the row is padding 0, which never counts.
* Metrics over the target's 0-based rank, averaged over users (`ranking_metrics`).

Tie rule (pessimistic): the target's rank is the number of candidates scoring strictly higher than
the target PLUS the number of OTHER candidates scoring exactly the same. A target tied with a
negative therefore never ranks above it: a model that gives every item the same score gets
HR@k = 0 for every k <= the number of negatives, and MRR = 1 / number of candidates.

NaN scores never flatter a model: a NaN target score raises `FloatingPointError`, and a candidate
scoring NaN counts as ranked above the target.

The scoring functions are passed in, so this module knows nothing of the model:
`encode_fn(params, ids [B, N] int32, mask_pos [B] int32) -> h [B, H]` and
`score_fn(params, h [B, H], item_ids [C] or [B, C] int32) -> scores [B, C]`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from bert4rec_jax import sharding
from bert4rec_jax.datasets.corpus import PAD_ID, Corpus, Split

PROTOCOLS = ("pop100", "uniform100", "full")
SAMPLED_PROTOCOLS = ("pop100", "uniform100")
SPLITS = ("valid", "test")

EncodeFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
ScoreFn = Callable[[Any, jax.Array, jax.Array], jax.Array]

# Rows of the candidate sampler processed at once: bounds its temporaries to a few tens of MB.
_SAMPLER_BLOCK_ROWS = 8192
# Full ranking pads every batch's histories to one width (one compilation) when the longest
# evaluated history fits in this many items; longer ones (ML-1m, ML-20m) pad per batch to a power
# of two, to keep the per-chunk exclusion work proportional to the batch's own histories.
_SINGLE_HISTORY_WIDTH_MAX = 1024
# Bulk rejection rounds before the sampler switches to an exact per-user draw for the rows still
# short (users whose history holds most of the popularity mass).
_SAMPLER_MAX_ROUNDS = 8


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def build_inputs(
    corpus: Corpus, split: Split, which: str, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Builds every evaluated user's model input for one split.

    Args:
      corpus: the corpus.
      split: its leave-one-out split.
      which: "valid" or "test".
      max_len: positions of the model's input; the history keeps its last `max_len - 1` items.

    Returns:
      ids: int32 [num_eval, max_len]; history items oldest first, then [MASK], then padding 0.
      mask_pos: int32 [num_eval]; the column of [MASK] in each row.
    """
    if max_len < 2:
        raise ValueError(f"max_len={max_len}: need at least one history item and [MASK]")
    ends = split.history_ends(corpus, which)  # [E]
    starts = np.maximum(corpus.offsets[split.eval_users], ends - (max_len - 1))  # [E]
    lengths = ends - starts  # [E], in 1..max_len - 1
    cols = np.arange(max_len)  # [N]
    index = np.minimum(starts[:, None] + cols[None, :], len(corpus.items) - 1)  # [E, N]
    ids = np.where(cols[None, :] < lengths[:, None], corpus.items[index], PAD_ID).astype(np.int32)
    ids[np.arange(len(ids)), lengths] = corpus.mask_id
    return ids, lengths.astype(np.int32)


def _pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, n - 1).bit_length()


def _padded_rows(
    items: np.ndarray, starts: np.ndarray, ends: np.ndarray, min_width: int = 8
) -> np.ndarray:
    """int32 [R, W]: items[starts[r]:ends[r]] per row, padded with 0 to a power-of-two width W.

    Widths are rounded up to powers of two so that batches of different history lengths reuse a
    handful of compiled shapes; `min_width` lets a caller fix one width for every batch.
    """
    lengths = ends - starts
    width = max(min_width, _pow2(int(lengths.max(initial=0))))
    cols = np.arange(width)
    index = np.minimum(starts[:, None] + cols[None, :], max(len(items) - 1, 0))
    return np.where(cols[None, :] < lengths[:, None], items[index], PAD_ID).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Candidates
# ---------------------------------------------------------------------------------------------


def _first_valid_per_row(values: np.ndarray, valid: np.ndarray, num: int) -> tuple[np.ndarray, ...]:
    """Keeps the first `num` valid entries of each row, in order; -1 fills the rest.

    Returns:
      kept: [R, num]; count: int64 [R], the number of valid entries kept per row.
    """
    rank = np.cumsum(valid, axis=1)  # [R, M]
    keep = valid & (rank <= num)
    # Stable: the kept entries move to the front in their original order.
    order = np.argsort(~keep, axis=1, kind="stable")[:, :num]
    kept = np.take_along_axis(values, order, axis=1)
    count = np.minimum(rank[:, -1], num)
    kept[np.arange(num)[None, :] >= count[:, None]] = -1
    return kept, count


def _first_occurrence(values: np.ndarray) -> np.ndarray:
    """bool, shape of values [R, M]: True where the entry does not occur earlier in its row."""
    # Stable: equal entries keep their left-to-right order, so the first of them leads.
    order = np.argsort(values, axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=1)
    repeat = np.zeros(values.shape, dtype=bool)
    np.put_along_axis(repeat, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], axis=1)
    return ~repeat


def sample_without_replacement(
    weights: np.ndarray,
    forbid_offsets: np.ndarray,
    forbid_items: np.ndarray,
    num: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draws `num` distinct items per row with probability proportional to `weights`.

    The draw is sequential sampling without replacement (each next item proportional to the weights
    of the items not yet drawn nor forbidden), done in bulk: every row draws a block of items by
    inverse CDF (searchsorted on the cumulative weights), entries that are forbidden for the row or
    repeat an earlier draw are rejected, and only the rows still short draw again. Rows still short
    after a few rounds (their forbidden items hold most of the weight) finish with an exact draw
    over the allowed items (exponential keys: the smallest E_i / w_i, which is the same sequential
    draw).

    Args:
      weights: float [num_items + 1], non-negative, weights[0] (padding) = 0.
      forbid_offsets: int64 [R + 1], CSR offsets into forbid_items.
      forbid_items: int [*]; row r may not draw forbid_items[forbid_offsets[r]:forbid_offsets[r+1]].
      num: items to draw per row.
      rng: the random generator.

    Returns:
      int32 [R, num]; distinct items per row, none forbidden, in the order drawn. A row with fewer
      than `num` allowed items of positive weight gets all of them, in random order, then
      padding 0.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights[0] != 0 or (weights < 0).any():
        raise ValueError("weights must be non-negative with weights[0] (padding) = 0")
    num_rows = len(forbid_offsets) - 1
    stride = len(weights)
    rows = np.repeat(np.arange(num_rows, dtype=np.int64), np.diff(forbid_offsets))
    # Sorted (row, item) keys: membership of any (row, item) pair is one searchsorted.
    keys = np.unique(rows * stride + np.asarray(forbid_items, dtype=np.int64))
    positive = weights > 0
    blocked = np.bincount(keys // stride, weights=positive[keys % stride], minlength=num_rows)
    allowed = int(positive.sum()) - blocked.astype(np.int64)  # [R]
    wanted = np.minimum(allowed, num)  # [R]; short rows take every allowed item
    cdf = np.cumsum(weights)
    last_positive = int(np.flatnonzero(positive)[-1]) if num_rows else 0
    out = np.empty((num_rows, num), dtype=np.int32)

    for block in range(0, num_rows, _SAMPLER_BLOCK_ROWS):
        row_ids = np.arange(block, min(block + _SAMPLER_BLOCK_ROWS, num_rows))  # [A]
        drawn = np.full((len(row_ids), num), -1, dtype=np.int64)  # [A, num]
        count = np.zeros(len(row_ids), dtype=np.int64)
        want = wanted[row_ids]
        active = np.flatnonzero(want > 0)  # rows of this block still short
        for _ in range(_SAMPLER_MAX_ROUNDS):
            if not len(active):
                break
            need = int((want[active] - count[active]).max())
            width = need + need // 2 + 8  # some slack for rejections, so most rows finish at once
            u = rng.random((len(active), width)) * cdf[-1]
            new = np.minimum(np.searchsorted(cdf, u, side="right"), last_positive)  # [a, width]
            pool = np.concatenate([drawn[active], new], axis=1)  # [a, num + width]
            pool_keys = row_ids[active][:, None] * stride + pool
            found = np.minimum(np.searchsorted(keys, pool_keys), max(len(keys) - 1, 0))
            forbidden = keys[found] == pool_keys if len(keys) else np.zeros(pool.shape, bool)
            valid = (pool > 0) & ~forbidden & _first_occurrence(pool)
            drawn[active], count[active] = _first_valid_per_row(pool, valid, num)
            active = active[count[active] < want[active]]
        for a in active:  # exact finish for the few rows rejection sampling could not fill
            r = row_ids[a]
            w = weights.copy()
            w[forbid_items[forbid_offsets[r] : forbid_offsets[r + 1]]] = 0
            w[drawn[a, : count[a]]] = 0
            with np.errstate(divide="ignore"):
                score = rng.exponential(size=len(w)) / w  # inf where w = 0
            rest = want[a] - count[a]
            pick = np.argpartition(score, rest - 1)[:rest]
            drawn[a, count[a] : want[a]] = pick[np.argsort(score[pick])]
        out[row_ids] = np.maximum(drawn, PAD_ID)  # unfilled slots (-1) become padding
    return out


def draw_candidates(
    corpus: Corpus, split: Split, which: str, protocol: str, num_negatives: int, seed: int
) -> np.ndarray:
    """Draws the sampled candidates of every evaluated user (no caching; see `load_candidates`).

    Args:
      corpus: the corpus.
      split: its leave-one-out split.
      which: "valid" or "test".
      protocol: "pop100" (popularity-weighted) or "uniform100".
      num_negatives: negatives per user.
      seed: the draw's seed; (seed, which, protocol) fix the candidates.

    Returns:
      int32 [num_eval, 1 + num_negatives]: the target in column 0, then the negatives. A user
      with fewer than num_negatives items outside their sequence gets all of them, then padding
      0, which the ranking never counts (their rank is over fewer candidates); a warning says how
      many users that is.

    Raises:
      ValueError: on an unknown protocol or split, or num_negatives < 1.
    """
    if protocol not in SAMPLED_PROTOCOLS:
        raise ValueError(f"protocol must be one of {SAMPLED_PROTOCOLS}, got {protocol!r}")
    if num_negatives < 1:
        raise ValueError(f"num_negatives={num_negatives} must be positive")
    targets = split.targets(which)  # also validates `which`
    if protocol == "pop100":
        weights = corpus.popularity.astype(np.float64)
    else:
        weights = np.ones(corpus.num_items + 1)
    weights[PAD_ID] = 0
    # Forbidden: the user's full sequence, which contains both held-out targets.
    starts = corpus.offsets[split.eval_users]
    lengths = corpus.offsets[split.eval_users + 1] - starts
    forbid_offsets = np.concatenate([[0], np.cumsum(lengths)])
    forbid_items = corpus.items[
        np.repeat(starts - forbid_offsets[:-1], lengths) + np.arange(forbid_offsets[-1])
    ]
    entropy = [seed, SPLITS.index(which), SAMPLED_PROTOCOLS.index(protocol)]
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
    negatives = sample_without_replacement(
        weights, forbid_offsets, forbid_items, num_negatives, rng
    )
    short = int((negatives[:, -1] == PAD_ID).sum())
    if short:
        logging.warning(
            "%d of %d users have fewer than num_negatives=%d items outside their sequence; they "
            "are ranked against all of them (the rest of their row is padding).",
            short, len(negatives), num_negatives,
        )  # fmt: skip
    return np.concatenate([targets[:, None].astype(np.int32), negatives], axis=1)


def corpus_fingerprint(corpus: Corpus) -> str:
    """12 hex digits of a hash of the sequences: a changed corpus never reuses stale candidates."""
    digest = hashlib.sha1()
    for array in (corpus.offsets, corpus.items, corpus.raw_item_ids):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:12]


def candidates_path(
    cache_dir: str | os.PathLike,
    corpus: Corpus,
    split: Split,
    which: str,
    protocol: str,
    num_negatives: int,
    seed: int,
) -> pathlib.Path:
    """Where `load_candidates` keeps one draw."""
    name = (
        f"candidates_{corpus.name}_{split.mode}_{which}_{protocol}_n{num_negatives}_seed{seed}_"
        f"{corpus_fingerprint(corpus)}.npz"
    )
    return pathlib.Path(cache_dir) / name


def load_candidates(
    corpus: Corpus,
    split: Split,
    which: str,
    protocol: str,
    num_negatives: int,
    seed: int,
    cache_dir: str | os.PathLike | None,
) -> np.ndarray:
    """The sampled candidates, read from the cache directory or drawn once and saved there.

    Args:
      corpus, split, which, protocol, num_negatives, seed: as in `draw_candidates`.
      cache_dir: the cache directory (created if missing); None = draw without saving.

    Returns:
      int32 [num_eval, 1 + num_negatives], the target in column 0.
    """
    if cache_dir is None:
        return draw_candidates(corpus, split, which, protocol, num_negatives, seed)
    path = candidates_path(cache_dir, corpus, split, which, protocol, num_negatives, seed)
    if path.exists():
        try:
            with np.load(path) as saved:
                candidates, users = saved["candidates"], saved["eval_users"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            candidates = users = np.zeros(0)  # unreadable: drawn again below
        expected = (len(split.eval_users), 1 + num_negatives)
        if (
            candidates.shape == expected
            and np.array_equal(users, split.eval_users)
            and np.array_equal(candidates[:, 0], split.targets(which))
        ):
            return candidates.astype(np.int32)
        logging.warning("Candidate file %s does not match the corpus; drawing again.", path)
    candidates = draw_candidates(corpus, split, which, protocol, num_negatives, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic: several processes (or runs) may write the same file; readers never see half of one.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, candidates=candidates, eval_users=split.eval_users)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return candidates


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Scoring on device
# ---------------------------------------------------------------------------------------------


def _sampled_ranks(score_fn: ScoreFn) -> Callable[..., tuple]:
    """(params, h [B, H], candidates [B, C]) -> (ranks [B] int32, nan [B] bool)."""

    def ranks(params, h, candidates):
        scores = score_fn(params, h, candidates).astype(jnp.float32)  # [B, C]
        target = scores[:, :1]  # [B, 1]
        others = scores[:, 1:]  # [B, C - 1]
        real = candidates[:, 1:] != PAD_ID  # [B, C - 1]; padding fills rows of short users
        # Pessimistic ties: every other candidate not scoring below the target ranks above it
        # (as in full ranking, a NaN candidate counts above the target).
        rank = jnp.sum(real & ~(others < target), axis=1, dtype=jnp.int32)
        return rank, jnp.isnan(target[:, 0])

    return ranks


def _full_ranks(
    score_fn: ScoreFn, num_items: int, item_chunk: int, exclude_history: bool
) -> Callable[..., tuple]:
    """(params, h [B, H], targets [B], history [B, W]) -> (ranks [B] int32, nan [B] bool).

    One jitted computation: a fori_loop over item chunks keeps, per user, the count of items
    scoring >= the target (pessimistic ties), so no [B, num_items] matrix ever exists. `nan` flags
    a NaN target score.
    """
    num_chunks = -(-num_items // item_chunk)

    def ranks(params, h, targets, history):
        batch = h.shape[0]
        target_score = score_fn(params, h, targets[:, None])[:, 0].astype(jnp.float32)  # [B]
        offsets = jnp.arange(item_chunk, dtype=jnp.int32)  # [chunk]

        def mark(local):  # [W] -> [chunk]; per row, so the batch stays sharded without gathers
            return jnp.zeros(item_chunk, bool).at[local].set(True, mode="drop")

        def body(c, above):
            start = 1 + c * item_chunk  # items are 1..num_items
            item_ids = start + offsets  # [chunk]
            real = item_ids <= num_items  # the last chunk runs past the catalogue
            scores = score_fn(params, h, jnp.minimum(item_ids, num_items))  # [B, chunk]
            scores = scores.astype(jnp.float32)
            # The target is not its own tie; items past the catalogue do not exist.
            counted = real[None, :] & (item_ids[None, :] != targets[:, None])  # [B, chunk]
            if exclude_history:
                local = history - start  # [B, W]; padding and other chunks' items fall outside
                local = jnp.where((history != PAD_ID) & (local >= 0), local, item_chunk)
                seen = jax.vmap(mark)(local)  # [B, chunk]
                counted &= ~seen
            # "not below" rather than ">=": a NaN candidate counts above the target, for free (a
            # separate NaN reduction per chunk costs about a fifth of the ranking time on CPU).
            above += jnp.sum(counted & ~(scores < target_score[:, None]), axis=1, dtype=jnp.int32)
            return above

        above = jax.lax.fori_loop(0, num_chunks, body, jnp.zeros(batch, jnp.int32))
        return above, jnp.isnan(target_score)

    return ranks


class Evaluator:
    """Scores the evaluated users of one corpus under several protocols.

    Inputs and candidates are built once per split and reused; compiled functions are kept per
    encode_fn and score_fn, so pass the same function objects on every call (not fresh lambdas).
    """

    def __init__(
        self,
        corpus: Corpus,
        split: Split,
        *,
        max_len: int,
        mesh: Mesh,
        protocols: Sequence[str] = ("pop100", "full"),
        num_negatives: int = 100,
        ks: Sequence[int] = (1, 5, 10, 20),
        batch_size: int = 512,
        item_chunk: int = 16384,
        exclude_history: bool = True,
        candidate_seed: int = 1234,
        cache_dir: str | os.PathLike | None = None,
    ):
        """Checks the settings; builds nothing yet.

        Args:
          corpus: the corpus.
          split: its leave-one-out split.
          max_len: the model's input length (eval inputs: last max_len - 1 items + [MASK]).
          mesh: the mesh; batches are split over its data axis, parameters replicated.
          protocols: any of "pop100", "uniform100", "full".
          num_negatives: negatives per user for the sampled protocols.
          ks: cut-offs of HR@k and NDCG@k.
          batch_size: users per global scoring batch; a multiple of the data axis size.
          item_chunk: items scored at once in full ranking.
          exclude_history: full ranking drops the user's input history from the candidates.
          candidate_seed: seed of the sampled negatives and of the `num_users` subsample.
          cache_dir: where sampled candidates are saved and reused; None = never saved.
        """
        unknown = [p for p in protocols if p not in PROTOCOLS]
        if unknown or not protocols:
            raise ValueError(f"eval.protocols={tuple(protocols)}: each must be one of {PROTOCOLS}")
        if num_negatives < 1 and any(p in SAMPLED_PROTOCOLS for p in protocols):
            raise ValueError(f"eval.num_negatives={num_negatives} must be positive")
        if item_chunk < 1:
            raise ValueError(f"eval.item_chunk={item_chunk} must be positive")
        if not ks or min(ks) < 1:
            raise ValueError(f"eval.ks={tuple(ks)} must be positive cut-offs")
        sharding.check_batch_size("eval.batch_size", batch_size, mesh)
        self.corpus = corpus
        self.split = split
        self.max_len = max_len
        self.mesh = mesh
        self.protocols = tuple(protocols)
        self.num_negatives = num_negatives
        self.ks = tuple(ks)
        self.batch_size = batch_size
        self.item_chunk = min(item_chunk, corpus.num_items)
        self.exclude_history = exclude_history
        self.candidate_seed = candidate_seed
        self.cache_dir = cache_dir
        self._inputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._candidates: dict[tuple[str, str], np.ndarray] = {}
        self._compiled: dict[tuple, Callable[..., tuple]] = {}

    @classmethod
    def from_config(
        cls,
        corpus: Corpus,
        split: Split,
        config: Any,
        *,
        mesh: Mesh,
        cache_dir: str | os.PathLike | None,
    ) -> Evaluator:
        """An evaluator set up from a config's `eval.*` fields and `model.max_len`."""
        e = config.eval
        return cls(
            corpus,
            split,
            max_len=config.model.max_len,
            mesh=mesh,
            protocols=tuple(e.protocols),
            num_negatives=e.num_negatives,
            ks=tuple(e.ks),
            batch_size=e.batch_size,
            item_chunk=e.item_chunk,
            exclude_history=e.exclude_history,
            candidate_seed=e.candidate_seed,
            cache_dir=cache_dir,
        )

    def inputs(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32 [num_eval, max_len], mask_pos int32 [num_eval]) of one split, cached."""
        if which not in self._inputs:
            self._inputs[which] = build_inputs(self.corpus, self.split, which, self.max_len)
        return self._inputs[which]

    def candidates(self, which: str, protocol: str) -> np.ndarray:
        """int32 [num_eval, 1 + num_negatives] of a sampled protocol, target first; cached."""
        key = (which, protocol)
        if key not in self._candidates:
            self._candidates[key] = load_candidates(
                self.corpus,
                self.split,
                which,
                protocol,
                self.num_negatives,
                self.candidate_seed,
                self.cache_dir,
            )
        return self._candidates[key]

    def user_sample(self, num_users: int) -> np.ndarray:
        """int64 [n]: sorted rows of split.eval_users; the same seeded sample on every call."""
        total = len(self.split.eval_users)
        if num_users <= 0 or num_users >= total:
            return np.arange(total)
        rng = np.random.default_rng(self.candidate_seed)
        return np.sort(rng.choice(total, size=num_users, replace=False))

    def _jitted(self, kind: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """The compiled encoder ("encode") or ranker ("sampled", "full") of `fn`, cached."""
        key = (kind, fn)
        if key not in self._compiled:
            replicated = sharding.replicated(self.mesh)
            data = sharding.data_sharded(self.mesh)
            # Batches are split over 'data' (inputs arrive as global arrays sharded that way),
            # parameters replicated. The hidden states stay sharded on device for the rankers;
            # the small rank vectors come back replicated so that every process can read them.
            if kind == "encode":
                self._compiled[key] = jax.jit(
                    fn, in_shardings=(replicated, data, data), out_shardings=data
                )
            else:
                if kind == "sampled":
                    ranker = _sampled_ranks(fn)
                else:
                    ranker = _full_ranks(
                        fn, self.corpus.num_items, self.item_chunk, self.exclude_history
                    )
                self._compiled[key] = jax.jit(
                    ranker,
                    in_shardings=(replicated,) + (data,) * (2 if kind == "sampled" else 3),
                    out_shardings=replicated,
                )
        return self._compiled[key]

    def _batches(self, rows: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Splits `rows` into global batches padded to batch_size: (padded rows, real count)."""
        out = []
        for begin in range(0, len(rows), self.batch_size):
            chunk = rows[begin : begin + self.batch_size]
            pad = self.batch_size - len(chunk)
            # Dummy rows repeat the first real row; their results are dropped.
            out.append((np.concatenate([chunk, np.full(pad, chunk[0], chunk.dtype)]), len(chunk)))
        return out

    def _put(self, arrays: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Global arrays from a full global batch: each process contributes its own rows."""
        count = jax.process_count()
        index = jax.process_index()
        local = {}
        for name, array in arrays.items():
            per_process = len(array) // count
            local[name] = array[index * per_process : (index + 1) * per_process]
        return sharding.global_batch(self.mesh, local)

    def rank_targets(
        self,
        params: Any,
        encode_fn: EncodeFn,
        score_fn: ScoreFn,
        which: str,
        protocols: Sequence[str],
        rows: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """The targets' 0-based pessimistic ranks for some rows of split.eval_users.

        Each user is encoded once; every protocol then scores the same hidden states.

        Args:
          params: the parameters, replicated over the mesh.
          encode_fn: (params, ids [B, N] int32, mask_pos [B] int32) -> h [B, H].
          score_fn: (params, h [B, H], item_ids [C] or [B, C] int32) -> scores [B, C].
          which: "valid" or "test".
          protocols: any of PROTOCOLS.
          rows: int [R], rows of split.eval_users.

        Returns:
          {protocol: int64 [R] ranks}.

        Raises:
          FloatingPointError: when the model scores NaN for a target (NaN candidates count as
            ranked above the target).
        """
        unknown = [p for p in protocols if p not in PROTOCOLS]
        if unknown:
            raise ValueError(f"protocols must be among {PROTOCOLS}, got {unknown}")
        ids, mask_pos = self.inputs(which)
        targets = self.split.targets(which).astype(np.int32)
        batches = self._batches(rows)
        encode = self._jitted("encode", encode_fn)
        # Dispatch is asynchronous: the host prepares the next batch while the device computes.
        hidden = [
            encode(params, *self._put({"ids": ids[r], "mask_pos": mask_pos[r]}).values())
            for r, _ in batches
        ]  # [B, H] per batch, sharded over 'data'
        out = {}
        for protocol in protocols:
            if protocol == "full":
                starts = self.corpus.offsets[self.split.eval_users]
                ends = self.split.history_ends(self.corpus, which)
                longest = _pow2(int((ends[rows] - starts[rows]).max(initial=1)))
                min_width = longest if longest <= _SINGLE_HISTORY_WIDTH_MAX else 8
            else:
                candidates = self.candidates(which, protocol)
            rank_fn = self._jitted("full" if protocol == "full" else "sampled", score_fn)
            pending = []
            for (r, real), h in zip(batches, hidden, strict=True):
                if protocol == "full" and self.exclude_history:
                    history = _padded_rows(self.corpus.items, starts[r], ends[r], min_width)
                    arrays = {"targets": targets[r], "history": history}
                elif protocol == "full":
                    arrays = {"targets": targets[r], "history": np.zeros((len(r), 1), np.int32)}
                else:
                    arrays = {"candidates": candidates[r]}
                pending.append((rank_fn(params, h, *self._put(arrays).values()), real))
            ranks = [np.asarray(rank)[:real] for (rank, _), real in pending]
            nans = np.concatenate([np.asarray(nan)[:real] for (_, nan), real in pending] or [[]])
            if nans.any():
                raise FloatingPointError(
                    f"the model scored NaN for the target of {int(nans.sum())} of {len(rows)} "
                    f"users ({protocol}, {which})"
                )
            out[protocol] = np.concatenate(ranks or [np.zeros(0)]).astype(np.int64)
        return out

    def evaluate(
        self,
        params: Any,
        encode_fn: EncodeFn,
        score_fn: ScoreFn,
        which: str = "valid",
        num_users: int = 0,
    ) -> dict[str, float]:
        """Evaluates one model on one split under every protocol.

        Args:
          params: the parameters passed to encode_fn and score_fn (replicated over the mesh).
          encode_fn: (params, ids [B, N] int32, mask_pos [B] int32) -> h [B, H].
          score_fn: (params, h [B, H], item_ids [C] or [B, C] int32) -> scores [B, C].
          which: "valid" or "test".
          num_users: 0 = every evaluated user; else a fixed seeded sample of that many.

        Returns:
          {"<protocol>/hr@k", "<protocol>/ndcg@k", "<protocol>/mrr": mean over users, ...,
           "num_users": users evaluated}.
        """
        if which not in SPLITS:
            raise ValueError(f"which must be one of {SPLITS}, got {which!r}")
        rows = self.user_sample(num_users)
        params = jax.device_put(params, sharding.replicated(self.mesh))
        ranks = self.rank_targets(params, encode_fn, score_fn, which, self.protocols, rows)
        results: dict[str, float] = {}
        for protocol in self.protocols:
            for name, value in ranking_metrics(ranks[protocol], self.ks).items():
                results[f"{protocol}/{name}"] = value
        results["num_users"] = float(len(rows))
        return results


def popularity_fns(corpus: Corpus) -> tuple[EncodeFn, ScoreFn, dict[str, jax.Array]]:
    """A trivial baseline that scores every item by its popularity, whoever the user is.

    The counts are `corpus.popularity` (over the full sequences, held-out items included, as the
    original's negative sampler), so this baseline peeks slightly at the targets: it is a floor that
    a trained model should clear, not a fair competitor.

    Args:
      corpus: the corpus.

    Returns:
      (encode_fn, score_fn, params) for `Evaluator.evaluate`.
    """
    counts = np.zeros(corpus.vocab_size, np.float32)  # [V + 2]; padding and [MASK] score 0
    counts[: corpus.num_items + 1] = corpus.popularity
    params = {"popularity": jnp.asarray(counts)}

    def encode_fn(params, ids, mask_pos):
        del params, mask_pos
        return jnp.zeros((ids.shape[0], 1), jnp.float32)  # [B, 1]; only the batch size matters

    def score_fn(params, h, item_ids):
        scores = params["popularity"][item_ids]  # [C] or [B, C]
        return jnp.broadcast_to(scores, (h.shape[0], scores.shape[-1]))

    return encode_fn, score_fn, params
