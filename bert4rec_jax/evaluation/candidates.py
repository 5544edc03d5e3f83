"""Sampled candidates of the leave-one-out protocols: drawing, and a cache on disk.

"pop100" (the paper's protocol) draws `num_negatives` negatives per evaluated user by popularity
(counts over the full sequences, as the original), without replacement, never an item of the
user's full sequence (every item the user ever interacted with, held-out ones included, as the
original) nor the target; "uniform100" draws them with every item equally likely. The protocols'
names keep the paper's "100" whatever `num_negatives` is.

A draw is seeded and saved once per (data set, split mode, held-out item, protocol, num_negatives,
seed, corpus fingerprint), so every run and every model is judged on the same candidates. A user
with fewer than num_negatives items outside their sequence (tiny catalogues) is ranked against all
of them: the rest of the row is padding 0, which never counts.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile

import numpy as np
from etils import epath

from bert4rec_jax.atomic import write_atomically
from bert4rec_jax.datasets import corpus as corpus_lib
from bert4rec_jax.datasets.corpus import PAD_ID, Corpus, Split

PROTOCOLS = ("pop100", "uniform100", "full")
SAMPLED_PROTOCOLS = ("pop100", "uniform100")
# The held-out item a protocol ranks: the second to last ("valid") or the last ("test").
SPLITS = ("valid", "test")

# Rows of the candidate sampler processed at once: bounds its temporaries to a few tens of MB.
_SAMPLER_BLOCK_ROWS = 8192
# Bulk rejection rounds before the sampler switches to an exact per-user draw for the rows still
# short (users whose history holds most of the popularity mass).
_SAMPLER_MAX_ROUNDS = 8


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
      split: its split (leave-one-out or temporal).
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
    # Leave-one-out: counts over the whole corpus, every item a candidate. Temporal: only what
    # was known before the target's cut-off, so items first seen after it are never drawn.
    known = split.known_popularity(corpus, which)
    if protocol == "pop100":
        weights = known.astype(np.float64)
    else:
        weights = np.ones(corpus.num_items + 1)
        if split.cutoff(which) is not None:
            weights = (known > 0).astype(np.float64)
    weights[PAD_ID] = 0
    users = split.users(which)
    starts = corpus.offsets[users]
    if split.cutoff(which) is None:
        # Forbidden: the user's full sequence, which contains both held-out targets.
        lengths = corpus.offsets[users + 1] - starts
    else:
        # Forbidden: what the user had done up to and including the target; later items are
        # the future, which a timeline split does not look at.
        lengths = split.history_ends(corpus, which) + 1 - starts
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
    # String raw ids are objects (their bytes would be pointers): hashed as stored on disk.
    raw = corpus_lib.pack_raw_ids(corpus.raw_item_ids, "raw").values()
    for array in (corpus.offsets, corpus.items, *raw):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:12]


def candidates_path(
    cache_dir: epath.PathLike,
    corpus: Corpus,
    split: Split,
    which: str,
    protocol: str,
    num_negatives: int,
    seed: int,
) -> epath.Path:
    """Where `load_candidates` keeps one draw (any path epath reads: local or gs://)."""
    mode = split.mode
    if split.cutoffs is not None:  # another pair of cut-offs is another draw
        mode += "-" + "-".join(f"{t:.0f}" for t in split.cutoffs)
    name = (
        f"candidates_{corpus.name}_{mode}_{which}_{protocol}_n{num_negatives}_seed{seed}_"
        f"{corpus_fingerprint(corpus)}.npz"
    )
    return epath.Path(cache_dir) / name


def load_candidates(
    corpus: Corpus,
    split: Split,
    which: str,
    protocol: str,
    num_negatives: int,
    seed: int,
    cache_dir: epath.PathLike | None,
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
            with path.open("rb") as f, np.load(f) as saved:
                candidates, users = saved["candidates"], saved["eval_users"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            candidates = users = np.zeros(0)  # unreadable: drawn again below
        expected = (len(split.users(which)), 1 + num_negatives)
        if (
            candidates.shape == expected
            and np.array_equal(users, split.users(which))
            and np.array_equal(candidates[:, 0], split.targets(which))
        ):
            return candidates.astype(np.int32)
        logging.warning("Candidate file %s does not match the corpus; drawing again.", path)
    candidates = draw_candidates(corpus, split, which, protocol, num_negatives, seed)
    # Atomic: several processes (or runs) may write the same file; readers never see half of one.
    buffer = io.BytesIO()
    np.savez(buffer, candidates=candidates, eval_users=split.users(which))
    write_atomically(path, buffer.getvalue())
    return candidates
