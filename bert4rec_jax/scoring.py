"""How a model scores items for one user: where its history goes, and the scoring functions.

The one rule (`place_history`): a history's last `history_length` known items, oldest first, from
column 0, padding 0 after them; BERT4Rec then puts [MASK] right after the last item and is scored
there; a left-to-right model (`model.kind="sasrec"`) gets no [MASK] and is scored at its last
item. Evaluation applies it in numpy (`build_inputs`), the exported function in jnp
(`model_inputs`), and the artifact checks its manifest with `history_length`.

No JAX at import: artifact.py reads an artifact without it; jax is imported where arrays are made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from bert4rec_jax.datasets.corpus import PAD_ID

if TYPE_CHECKING:
    import jax

    from bert4rec_jax.datasets.corpus import Corpus, Split
    from bert4rec_jax.models import Model


def appends_mask(kind: str) -> bool:
    """The one decision of where a model is scored: True = at a [MASK] appended after the
    history (BERT4Rec, the one cloze-trained kind), False = at the history's last item (every
    left-to-right kind, `ModelConfig.next_item`)."""
    return kind == "bert4rec"


def history_length(max_len: int, append_mask: bool) -> int:
    """The most history items one input of `max_len` positions holds: one is [MASK]'s."""
    return max_len - 1 if append_mask else max_len


def place_history(window: Any, lengths: Any, mask_id: int, append_mask: bool) -> tuple[Any, Any]:
    """The model's input and scoring position from each row's window of history; numpy or jnp.

    Args:
      window: int [B, W]: each row's last known items, oldest first from column 0, 0 after.
      lengths: int [B]: items in each row's window.
      mask_id: the [MASK] id (vocab_size - 1).
      append_mask: `appends_mask(kind)`.

    Returns:
      ids: int32 [B, W + 1], the window with [MASK] at column `lengths` (BERT4Rec), or the
        window itself [B, W] (left to right).
      positions: int32 [B], the scored column: [MASK]'s, or the last item's (0 for an empty row).
    """
    xp = _array_module(window)  # numpy for evaluation, jax.numpy inside the export
    if not append_mask:
        return window.astype(xp.int32), xp.maximum(lengths - 1, 0).astype(xp.int32)
    padded = xp.concatenate([window, xp.zeros((window.shape[0], 1), window.dtype)], axis=1)
    columns = xp.arange(padded.shape[1])[None, :]  # [1, W + 1]
    ids = xp.where(columns == lengths[:, None], mask_id, padded)  # [B, W + 1]
    return ids.astype(xp.int32), lengths.astype(xp.int32)


def _array_module(x: Any) -> Any:
    """numpy for a numpy array, else jax.numpy (a jax array or tracer: jax is imported already).

    Not `x.__array_namespace__()`: numpy 1.26, which setup.cfg allows, has no such method.
    """
    if isinstance(x, np.ndarray):
        return np
    import jax.numpy as jnp

    return jnp


def build_inputs(
    corpus: Corpus, split: Split, which: str, max_len: int, append_mask: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Every evaluated user's model input for one split (numpy; `place_history`'s rule).

    Args:
      corpus: the corpus.
      split: its leave-one-out split.
      which: "valid" (history: the training items) or "test" (training + validation items).
      max_len: positions of the model's input.
      append_mask: `appends_mask(model.kind)`.

    Returns:
      ids: int32 [num_eval, max_len]; history items oldest first, then [MASK] (with
        `append_mask`), then padding 0.
      mask_pos: int32 [num_eval]; the scoring column of each row: [MASK]'s, or the last item's.
    """
    if max_len < 1 + append_mask:
        raise ValueError(f"max_len={max_len}: need at least one history item and [MASK]")
    ends = split.history_ends(corpus, which)  # [E]
    width = history_length(max_len, append_mask)
    starts = np.maximum(corpus.offsets[split.users(which)], ends - width)  # [E]
    window = padded_rows(corpus.items, starts, ends, width)  # [E, W]
    return place_history(window, ends - starts, corpus.mask_id, append_mask)


def padded_rows(items: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """int32 [R, width]: items[starts[r]:ends[r]] per row from column 0, padded with 0 after.

    Every row must fit (ends - starts <= width).
    """
    cols = np.arange(width)  # [W]
    index = np.minimum(starts[:, None] + cols[None, :], max(len(items) - 1, 0))  # [R, W]
    lengths = ends - starts  # [R]
    return np.where(cols[None, :] < lengths[:, None], items[index], PAD_ID).astype(np.int32)


def model_inputs(model: Model) -> Callable[[jax.Array], tuple[jax.Array, jax.Array]]:
    """Whole histories -> the encoder's input (jnp, inside the exported function).

    Returns:
      inputs(history int32 [b, s]) -> (ids int32 [b, w + 1], mask_pos int32 [b]) with
      w = min(s, history_length): `place_history` on each row's last w known items (SASRec:
      [b, w]). Unknown entries (outside 1..num_items) anywhere in the history are skipped, not
      counted as items. A short s gives a short window: padding at the end changes no output of
      the encoder (padded keys get no attention weight and the positions are absolute), so a
      batch of short histories costs what its length costs.
    """
    import jax
    import jax.numpy as jnp

    cfg = model.config
    num_items = cfg.vocab_size - 2
    append_mask = appends_mask(cfg.kind)
    max_width = history_length(cfg.max_len, append_mask)

    def inputs(history):
        b, s = history.shape
        # min(s, history_length), also when s is symbolic (then it is part of the exported shape).
        width = jax.core.min_dim(s, max_width)
        known = (history >= 1) & (history <= num_items)  # [b, s]
        rank = jnp.cumsum(known, axis=1, dtype=jnp.int32)  # [b, s]: 1-based among known items
        total = rank[:, -1]  # [b] known items in the history
        start = jnp.maximum(total - width, 0)  # [b] known items left of the window
        pos = rank - 1 - start[:, None]  # [b, s]: where each known item lands in the window
        pos = jnp.where(known & (pos >= 0), pos, width)  # everything else: dropped below
        rows = jnp.arange(b)[:, None]
        window = jnp.zeros((b, width), jnp.int32).at[rows, pos].set(history, mode="drop")
        return place_history(window, jnp.minimum(total, width), cfg.mask_id, append_mask)

    return inputs


class ScoringFns(NamedTuple):
    """How a model scores items for one user, split in two so candidates can vary per protocol.

    encode: (params, ids [B, N] int32, mask_pos [B] int32[, users [B] int32]) -> h [B, H], the
      head features at the scoring position `mask_pos` (`place_history`); `users` (user rows,
      0 = unknown) is passed, and then required, only when `uses_users`.
    score: (params, h [B, H], item_ids [C] or [B, C] int32) -> float32 scores [B, C].
    uses_users: the encoder reads each row's user (`model.user_features`).
    append_mask: where the encoder reads a history (`appends_mask`).
    """

    encode: Callable[..., jax.Array]
    score: Callable[[Any, jax.Array, jax.Array], jax.Array]
    uses_users: bool = False
    append_mask: bool = True


def scoring_fns(model: Model, *, last_block_at_mask: bool = False) -> ScoringFns:
    """The model's `ScoringFns` (no dropout): what evaluation, export and serving call.

    `last_block_at_mask` computes the last block for the [MASK] row only (`predict_hidden`'s
    `last_block_at_positions`): the same scores up to float rounding, for nearly one block less
    work. Export uses it; evaluation keeps the full encoder, so its metrics stay bit for bit.
    """
    module = type(model)

    def encode(params, ids, mask_pos, users=None):  # [B, N], [B], [B] -> [B, H]
        h = model.apply(
            {"params": params},
            ids,
            mask_pos[:, None],
            train=False,
            users=users,
            last_block_at_positions=last_block_at_mask,
            method=module.predict_hidden,
        )
        return h[:, 0]

    def score(params, h, item_ids):  # [B, H], [C] or [B, C] -> [B, C]
        return model.apply({"params": params}, h, item_ids, method=module.item_scores)

    return ScoringFns(
        encode,
        score,
        uses_users=bool(model.config.user_features),
        append_mask=appends_mask(model.config.kind),
    )


def popularity_fns(
    corpus: Corpus, split: Split | None = None
) -> tuple[ScoringFns, dict[str, jax.Array]]:
    """A trivial baseline that scores every item by its popularity, whoever the user is.

    The counts are `corpus.popularity` (over the full sequences, held-out items included, as the
    original's negative sampler), so this baseline peeks slightly at the targets: it is a floor that
    a trained model should clear, not a fair competitor. A temporal split counts only the
    training period (before its first cut-off): a timeline split must not look ahead.

    Args:
      corpus: the corpus.
      split: its split; only a temporal one changes the counts.

    Returns:
      (scoring functions, their params) for an `Evaluator`.
    """
    import jax.numpy as jnp

    counts = np.zeros(corpus.vocab_size, np.float32)  # [V + 2]; padding and [MASK] score 0
    popularity = corpus.popularity
    if split is not None and split.cutoffs is not None:
        popularity = split.known_popularity(corpus, "valid")
    counts[: corpus.num_items + 1] = popularity
    params = {"popularity": jnp.asarray(counts)}

    def encode(params, ids, mask_pos):
        del params, mask_pos
        return jnp.zeros((ids.shape[0], 1), jnp.float32)  # [B, 1]; only the batch size matters

    def score(params, h, item_ids):
        scores = params["popularity"][item_ids]  # [C] or [B, C]
        return jnp.broadcast_to(scores, (h.shape[0], scores.shape[-1]))

    return ScoringFns(encode, score), params
