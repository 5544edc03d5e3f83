"""Ranking on the mesh: each evaluated user's target ranked among its candidates, per protocol.

Every evaluated user is scored once per held-out item ("valid", "test") from the input
`scoring.build_inputs` places; the candidates are sampled (`candidates.py`, target in column 0)
or the whole catalogue ("full", scored in item chunks). The protocols are in docs/evaluation.md's
"Evaluation"; the tie and NaN rules in `Ranker`'s comment. `Evaluator.user_results` keeps each
user's rank (and, for the test, top-k list) with what identifies its candidates (`per_user.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.sharding import Mesh

from bert4rec_jax import sharding
from bert4rec_jax.datasets.corpus import PAD_ID, Corpus, Split
from bert4rec_jax.evaluation import candidates as candidates_lib
from bert4rec_jax.evaluation import per_user
from bert4rec_jax.evaluation.candidates import PROTOCOLS, SAMPLED_PROTOCOLS, SPLITS
from bert4rec_jax.evaluation.metrics import training_popularity
from bert4rec_jax.scoring import ScoringFns, build_inputs, padded_rows

# Full ranking pads every batch's histories to one width (one compilation) when the longest
# evaluated history fits in this many items; longer ones (ML-1m, ML-20m) pad per batch to a power
# of two, to keep the per-chunk exclusion work proportional to the batch's own histories.
_SINGLE_HISTORY_WIDTH_MAX = 1024
# A ranker: (params, h [B, H], per-user arrays {name: [B, ...]}) -> (ranks [B] int32, nan [B] bool).
# Ties are pessimistic: the target's 0-based rank counts the candidates scoring strictly higher
# PLUS the OTHER candidates scoring exactly the same, so a model that scores every item alike gets
# HR@k = 0 for every k <= the number of negatives and MRR = 1 / candidates. A NaN never flatters a
# model: a NaN target raises FloatingPointError (`Evaluator.rank_targets`), a NaN candidate counts
# above the target.
Ranker = Callable[[Any, jax.Array, dict[str, jax.Array]], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What evaluation reads: the config's `eval` section with `model.max_len` and `input.buckets`
    (`config.RunConfig`; when to validate is the train section's).

    Attributes:
      max_len: the model's input length (inputs: the last max_len - 1 items + [MASK], or
        max_len items for a left-to-right model: `scoring.build_inputs`).
      protocols: any of "pop100", "uniform100", "full".
      num_negatives: negatives per user of the sampled protocols.
      ks: cut-offs of HR@k and NDCG@k.
      batch_size: users per global scoring batch; a multiple of the mesh's data axis.
      item_chunk: items scored at once in full ranking.
      exclude_history: full ranking drops the user's input history from the candidates.
      candidate_seed: seed of the sampled negatives and of the `num_users` subsample.
      buckets: () (off): every input has max_len positions. Otherwise input lengths (training's
        `input.buckets`): users are encoded in order of history length, each batch cut to the
        shortest bucket that holds its longest input (the [MASK] output does not depend on
        padding positions); ranks come back in the users' order.
    """

    max_len: int
    protocols: tuple[str, ...] = ("pop100", "full")
    num_negatives: int = 100
    ks: tuple[int, ...] = (1, 5, 10, 20)
    batch_size: int = 512
    item_chunk: int = 16384
    exclude_history: bool = True
    candidate_seed: int = 1234
    buckets: tuple[int, ...] = ()

    def __post_init__(self):
        # Field names are the config's, so a bad command-line override is easy to find.
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown or not self.protocols:
            raise ValueError(f"eval.protocols={self.protocols}: each must be one of {PROTOCOLS}")
        if self.num_negatives < 1 and any(p in SAMPLED_PROTOCOLS for p in self.protocols):
            raise ValueError(f"eval.num_negatives={self.num_negatives} must be positive")
        if self.item_chunk < 1:
            raise ValueError(f"eval.item_chunk={self.item_chunk} must be positive")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"eval.ks={self.ks} must be positive cut-offs")
        if self.max_len < 2:
            raise ValueError(f"model.max_len={self.max_len}: need one history item and [MASK]")
        if self.batch_size < 1:
            raise ValueError(f"eval.batch_size={self.batch_size} must be positive")

    def input_width(self, length: int) -> int:
        """Positions an input of `length` (history + [MASK], or history) is encoded with."""
        fits = [b for b in self.buckets if b >= length]
        return min(fits) if fits else self.max_len

    def metric_names(self) -> tuple[str, ...]:
        """Every "<protocol>/<metric>" key `Evaluator.evaluate` returns."""
        per_protocol = [f"{m}@{k}" for k in self.ks for m in ("hr", "ndcg")] + ["mrr"]
        return tuple(f"{p}/{m}" for p in self.protocols for m in per_protocol)


def _padded_rows(
    items: np.ndarray, starts: np.ndarray, ends: np.ndarray, min_width: int = 8
) -> np.ndarray:
    """int32 [R, W]: items[starts[r]:ends[r]] per row, padded with 0 to a power-of-two width W.

    Widths are rounded up to powers of two so that batches of different history lengths reuse a
    handful of compiled shapes; `min_width` lets a caller fix one width for every batch.
    """
    width = max(min_width, sharding.pow2(int((ends - starts).max(initial=0))))
    return padded_rows(items, starts, ends, width)


# ---------------------------------------------------------------------------------------------
# Rankers: one jitted function per protocol, all of the same signature
# ---------------------------------------------------------------------------------------------


def _top_items(scores: jax.Array, ids: jax.Array, valid: jax.Array, k: int):
    """The k best-scored valid ids per row, best first: (scores float32 [B, k], ids int32 [B, k]).

    Rows with fewer than k valid ids end in score -inf and id 0 (padding). Ties go to the earlier
    column (`lax.top_k`); a NaN score is never listed.
    """
    masked = jnp.where(valid & ~jnp.isnan(scores), scores, -jnp.inf)  # [B, C]
    values, index = jax.lax.top_k(masked, min(k, masked.shape[1]))  # [B, k']
    ids = jnp.broadcast_to(ids, masked.shape)
    top = jnp.where(values > -jnp.inf, jnp.take_along_axis(ids, index, axis=1), PAD_ID)
    pad = ((0, 0), (0, k - top.shape[1]))
    return jnp.pad(values, pad, constant_values=-jnp.inf), jnp.pad(top, pad).astype(jnp.int32)


def sampled_ranker(score_fn: Callable[..., jax.Array], top_k: int = 0) -> Ranker:
    """Ranks the target (column 0 of arrays["candidates"] [B, C]) among its sampled negatives.

    With top_k > 0 it also returns each row's top_k candidates (int32 [B, top_k], best first).
    """

    def ranks(params, h, arrays):
        candidates = arrays["candidates"]  # [B, C]
        scores = score_fn(params, h, candidates).astype(jnp.float32)  # [B, C]
        target = scores[:, :1]  # [B, 1]
        others = scores[:, 1:]  # [B, C - 1]
        real = candidates[:, 1:] != PAD_ID  # [B, C - 1]; padding fills rows of short users
        # Pessimistic ties: every other candidate not scoring below the target ranks above it
        # (as in full ranking, a NaN candidate counts above the target).
        rank = jnp.sum(real & ~(others < target), axis=1, dtype=jnp.int32)
        if not top_k:
            return rank, jnp.isnan(target[:, 0])
        _, top = _top_items(scores, candidates, candidates != PAD_ID, top_k)
        return rank, jnp.isnan(target[:, 0]), top

    return ranks


def full_ranker(
    score_fn: Callable[..., jax.Array],
    num_items: int,
    item_chunk: int,
    exclude_history: bool,
    top_k: int = 0,
) -> Ranker:
    """Ranks arrays["targets"] [B] among every item, minus arrays["history"] [B, W] if excluded.

    The excluded history is all of it, not only the input window; the target is always kept;
    padding (0) and [MASK] (V + 1) are never candidates.

    One jitted computation: a fori_loop over item chunks keeps, per user, the count of items
    scoring >= the target (pessimistic ties), so no [B, num_items] matrix ever exists. With
    top_k > 0 the loop also keeps each user's top_k candidates (merged chunk by chunk; ties go to
    the lower item id), returned third as int32 [B, top_k].
    """
    num_chunks = -(-num_items // item_chunk)

    def ranks(params, h, arrays):
        targets, history = arrays["targets"], arrays["history"]  # [B], [B, W]
        batch = h.shape[0]
        target_score = score_fn(params, h, targets[:, None])[:, 0].astype(jnp.float32)  # [B]
        offsets = jnp.arange(item_chunk, dtype=jnp.int32)  # [chunk]

        def mark(local):  # [W] -> [chunk]; per row, so the batch stays sharded without gathers
            return jnp.zeros(item_chunk, bool).at[local].set(True, mode="drop")

        def body(c, carry):
            above, best_scores, best_items = carry
            start = 1 + c * item_chunk  # items are 1..num_items
            item_ids = start + offsets  # [chunk]
            real = item_ids <= num_items  # the last chunk runs past the catalogue
            scores = score_fn(params, h, jnp.minimum(item_ids, num_items))  # [B, chunk]
            scores = scores.astype(jnp.float32)
            candidate = jnp.broadcast_to(real[None, :], scores.shape)  # [B, chunk]
            if exclude_history:
                local = history - start  # [B, W]; padding and other chunks' items fall outside
                local = jnp.where((history != PAD_ID) & (local >= 0), local, item_chunk)
                seen = jax.vmap(mark)(local)  # [B, chunk]
                candidate &= ~seen | (item_ids[None, :] == targets[:, None])
            # The target is not its own tie; items past the catalogue do not exist.
            counted = candidate & (item_ids[None, :] != targets[:, None])  # [B, chunk]
            # "not below" rather than ">=": a NaN candidate counts above the target, for free (a
            # separate NaN reduction per chunk costs about a fifth of the ranking time on CPU).
            above += jnp.sum(counted & ~(scores < target_score[:, None]), axis=1, dtype=jnp.int32)
            if top_k:  # the best so far come first: on ties the lower item id stays listed
                merged = jnp.concatenate([best_scores, scores], axis=1)  # [B, top_k + chunk]
                valid = jnp.concatenate([best_items != PAD_ID, candidate], axis=1)
                ids = jnp.concatenate(
                    [best_items, jnp.broadcast_to(item_ids[None, :], scores.shape)], axis=1
                )
                best_scores, best_items = _top_items(merged, ids, valid, top_k)
            return above, best_scores, best_items

        start = (
            jnp.zeros(batch, jnp.int32),
            jnp.full((batch, top_k), -jnp.inf, jnp.float32),
            jnp.zeros((batch, top_k), jnp.int32),
        )
        above, _, top = jax.lax.fori_loop(0, num_chunks, body, start)
        if not top_k:
            return above, jnp.isnan(target_score)
        return above, jnp.isnan(target_score), top

    return ranks


class Evaluator:
    """Scores the evaluated users of one corpus with one model's scoring functions.

    Built once per (corpus, split, config, scoring functions): inputs and candidates are built
    once per held-out item and reused, and each protocol's ranker is jitted once, here.
    """

    def __init__(
        self,
        corpus: Corpus,
        split: Split,
        config: EvalConfig,
        fns: ScoringFns,
        *,
        mesh: Mesh,
        cache_dir: epath.PathLike | None = None,
    ):
        """Checks the settings against the mesh and jits the encoder and the rankers.

        Args:
          corpus: the corpus.
          split: its leave-one-out split.
          config: the evaluation settings.
          fns: the model's encode and score functions.
          mesh: batches are split over its data axis; parameters replicated but for the item
            rows, split over its model axis.
          cache_dir: where sampled candidates are saved and reused; None = never saved.
        """
        sharding.check_batch_size("eval.batch_size", config.batch_size, mesh)
        self.corpus = corpus
        self.split = split
        self.config = config
        self.mesh = mesh
        self.cache_dir = cache_dir
        self._item_chunk = min(config.item_chunk, corpus.num_items)
        self._inputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._candidates: dict[tuple[str, str], np.ndarray] = {}
        replicated = sharding.replicated(mesh)
        data = sharding.data_sharded(mesh)
        # Batches are split over 'data' (inputs arrive as global arrays sharded that way);
        # parameters keep the layout `evaluate` gives them (`sharding.place_params`: replicated,
        # item rows split over 'model' when that axis is > 1; XLA partitions the item gathers
        # and products over it). The hidden states stay sharded on device for the rankers; the
        # small rank vectors come back replicated so that every process can read them.
        params_layout = None  # = the argument's own sharding
        vocab_size = corpus.vocab_size

        def model_rows(params):
            # The scoring functions see the model's shapes: padding rows cut (else the identity).
            return sharding.fit_item_rows(params, vocab_size)

        def encode(params, ids, mask_pos, *users):  # users: [B] rows, with user features only
            return fns.encode(model_rows(params), ids, mask_pos, *users)

        def with_model_rows(ranker: Ranker) -> Ranker:
            return lambda params, h, arrays: ranker(model_rows(params), h, arrays)

        self._uses_users = fns.uses_users
        self._append_mask = fns.append_mask  # where the model reads a history
        self._encode = jax.jit(
            encode,
            in_shardings=(params_layout, data, data) + ((data,) if fns.uses_users else ()),
            out_shardings=data,
        )

        def jit_ranker(protocol: str, top_k: int):
            if protocol == "full":
                ranker = full_ranker(
                    fns.score, corpus.num_items, self._item_chunk, config.exclude_history, top_k
                )
            else:
                ranker = sampled_ranker(fns.score, top_k)
            return jax.jit(
                with_model_rows(ranker),
                in_shardings=(params_layout, data, data),
                out_shardings=replicated,
            )

        self._jit_ranker = jit_ranker
        # (protocol, top_k) -> the jitted ranker; those that also list items (top_k > 0) are
        # built when first asked for: validation never pays for them.
        self._rankers = {(protocol, 0): jit_ranker(protocol, 0) for protocol in config.protocols}
        self._fingerprints: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._popularity: tuple[np.ndarray, int] | None = None
        self._corpus_fingerprint: str | None = None  # hashing the corpus once, not per validation

    def inputs(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32 [num_eval, max_len], mask_pos int32 [num_eval]) of one held-out item."""
        if which not in self._inputs:
            self._inputs[which] = build_inputs(
                self.corpus, self.split, which, self.config.max_len, self._append_mask
            )
        return self._inputs[which]

    def candidates(self, which: str, protocol: str) -> np.ndarray:
        """int32 [num_eval, 1 + num_negatives] of a sampled protocol, target first; cached."""
        key = (which, protocol)
        if key not in self._candidates:
            self._candidates[key] = candidates_lib.load_candidates(
                self.corpus,
                self.split,
                which,
                protocol,
                self.config.num_negatives,
                self.config.candidate_seed,
                self.cache_dir,
            )
        return self._candidates[key]

    def user_sample(self, num_users: int, which: str = "valid") -> np.ndarray:
        """int64 [n]: sorted rows of split.users(which); the same seeded sample on every call."""
        total = len(self.split.users(which))
        if num_users <= 0 or num_users >= total:
            return np.arange(total)
        rng = np.random.default_rng(self.config.candidate_seed)
        return np.sort(rng.choice(total, size=num_users, replace=False))

    def _batches(self, rows: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Splits `rows` into global batches padded to batch_size: (padded rows, real count)."""
        out = []
        size = self.config.batch_size
        for begin in range(0, len(rows), size):
            chunk = rows[begin : begin + size]
            pad = size - len(chunk)
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

    def _ranker_inputs(self, which: str, protocol: str, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The per-user arrays a protocol's ranker reads, for some rows of split.eval_users."""
        if protocol != "full":
            return {"candidates": self.candidates(which, protocol)[rows]}
        targets = self.split.targets(which)[rows].astype(np.int32)
        if not self.config.exclude_history:
            return {"targets": targets, "history": np.zeros((len(rows), 1), np.int32)}
        starts = self.corpus.offsets[self.split.users(which)]
        ends = self.split.history_ends(self.corpus, which)
        return {
            "targets": targets,
            "history": _padded_rows(
                self.corpus.items, starts[rows], ends[rows], self._history_width(which)
            ),
        }

    def _history_width(self, which: str) -> int:
        """One padded history width for every batch when the longest history allows it."""
        starts = self.corpus.offsets[self.split.users(which)]
        longest = sharding.pow2(
            int((self.split.history_ends(self.corpus, which) - starts).max(initial=1))
        )
        return longest if longest <= _SINGLE_HISTORY_WIDTH_MAX else 8

    def rank_targets(
        self, params: Any, which: str, protocols: Sequence[str], rows: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The targets' 0-based pessimistic ranks for some rows of split.eval_users.

        Each user is encoded once; every protocol then scores the same hidden states.

        Args:
          params: the parameters on the mesh (`sharding.place_params`).
          which: "valid" or "test".
          protocols: some of the protocols the evaluator was built for.
          rows: int [R], rows of split.eval_users.

        Returns:
          {protocol: int64 [R] ranks}.

        Raises:
          FloatingPointError: when the model scores NaN for a target (NaN candidates count as
            ranked above the target).
        """
        return self._rank(params, which, protocols, rows, top_k=0)[0]

    def _rank(
        self, params: Any, which: str, protocols: Sequence[str], rows: np.ndarray, top_k: int
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """`rank_targets`, and with top_k > 0 each user's top_k items: ({p: ranks}, {p: top})."""
        unknown = [p for p in protocols if (p, 0) not in self._rankers]
        if unknown:
            raise ValueError(
                f"protocols {unknown} are not among eval.protocols={self.config.protocols}"
            )
        ids, mask_pos = self.inputs(which)
        order = None
        if self.config.buckets:  # similar lengths share a batch, cut to its bucket below
            order = np.argsort(mask_pos[rows], kind="stable")
            rows = rows[order]
        batches = self._batches(rows)
        # User rows (corpus user u is row u + 1, see models.BERT4Rec), for user features only.
        users = (self.split.users(which) + 1).astype(np.int32)  # [num_eval]

        def encoder_inputs(r: np.ndarray) -> dict[str, np.ndarray]:
            width = self.config.input_width(int(mask_pos[r].max()) + 1)
            arrays = {"ids": ids[r, :width], "mask_pos": mask_pos[r]}
            if self._uses_users:
                arrays["users"] = users[r]
            return arrays

        # Dispatch is asynchronous: the host prepares the next batch while the device computes.
        hidden = [
            self._encode(params, *self._put(encoder_inputs(r)).values()) for r, _ in batches
        ]  # [B, H] per batch, sharded over 'data'
        out, tops = {}, {}
        for protocol in protocols:
            if (protocol, top_k) not in self._rankers:
                self._rankers[protocol, top_k] = self._jit_ranker(protocol, top_k)
            ranker = self._rankers[protocol, top_k]
            pending = [
                (ranker(params, h, self._put(self._ranker_inputs(which, protocol, r))), real)
                for (r, real), h in zip(batches, hidden, strict=True)
            ]
            ranks = [np.asarray(result[0])[:real] for result, real in pending]
            nans = np.concatenate(
                [np.asarray(result[1])[:real] for result, real in pending] or [[]]
            )
            if nans.any():
                raise FloatingPointError(
                    f"the model scored NaN for the target of {int(nans.sum())} of {len(rows)} "
                    f"users ({protocol}, {which})"
                )
            out[protocol] = np.concatenate(ranks or [np.zeros(0)]).astype(np.int64)
            if top_k:
                lists = [np.asarray(result[2])[:real] for result, real in pending]
                tops[protocol] = np.concatenate(lists or [np.zeros((0, top_k))]).astype(np.int32)
            if order is not None:  # back to the order of the rows asked for
                out[protocol][order] = out[protocol].copy()
                if top_k:
                    tops[protocol][order] = tops[protocol].copy()
        return out, tops

    def evaluate(self, params: Any, which: str = "valid", num_users: int = 0) -> dict[str, float]:
        """Evaluates the parameters on one held-out item under every protocol.

        Args:
          params: the parameters the scoring functions take.
          which: "valid" or "test".
          num_users: 0 = every evaluated user; else a fixed seeded sample of that many.

        Returns:
          {"<protocol>/hr@k", "<protocol>/ndcg@k", "<protocol>/mrr": mean over users, ...,
           "num_users": users evaluated}.
        """
        return self.user_results(params, which, num_users, lists=False).metrics()

    def user_results(
        self, params: Any, which: str = "test", num_users: int = 0, *, lists: bool = True
    ) -> per_user.UserResults:
        """Every evaluated user's outcome on one held-out item, under every protocol.

        Args:
          params: the parameters the scoring functions take.
          which: "valid" or "test".
          num_users: 0 = every evaluated user; else a fixed seeded sample of that many.
          lists: also each user's top-max(ks) items per protocol (for `summary`'s beyond-accuracy
            metrics; one more compilation per protocol and a running top-k in full ranking).

        Returns:
          The per-user results; `.metrics()` are `evaluate`'s.
        """
        if which not in SPLITS:
            raise ValueError(f"which must be one of {SPLITS}, got {which!r}")
        rows = self.user_sample(num_users, which)
        # Item rows padded (zeros) to the mesh's model axis and split over it; never ranked:
        # the rankers score ids 1..num_items only.
        params = sharding.place_params(params, self.mesh, self.corpus.vocab_size)
        top_k = max(self.config.ks) if lists else 0
        ranks, tops = self._rank(params, which, self.config.protocols, rows, top_k)
        users = self.split.users(which)[rows]
        targets = self.split.targets(which)[rows].astype(np.int32)
        starts = self.corpus.offsets[self.split.users(which)]
        history = (self.split.history_ends(self.corpus, which) - starts)[rows]
        counts, _ = self.popularity()
        fingerprints = {p: self.candidate_fingerprints(which, p) for p in self.config.protocols}
        return per_user.UserResults(
            info=self._results_info(which),
            users=users.astype(np.int64),
            raw_users=np.asarray(self.corpus.raw_user_ids)[users],
            targets=targets,
            raw_targets=np.asarray(self.corpus.raw_item_ids)[targets],
            history_lengths=history.astype(np.int64),
            target_known=counts[targets] > 0,
            ranks=ranks,
            num_candidates={p: f[1][rows] for p, f in fingerprints.items()},
            candidates={p: f[0][rows] for p, f in fingerprints.items()},
            top=tops,
        )

    def summary(self, results: per_user.UserResults) -> dict[str, float]:
        """Every aggregate of per-user results: accuracy (`evaluate`'s), by history length, and
        beyond accuracy where there are lists. Keys: "<protocol>/<metric>", "num_users",
        "history=<bucket>/...", "<protocol>/coverage@k", "/popularity@k", "/novelty@k"."""
        return {
            **results.metrics(),
            **results.by_history(),
            **results.beyond_accuracy(*self.popularity()),
        }

    def popularity(self) -> tuple[np.ndarray, int]:
        """(users per item in training, training users): `metrics.training_popularity`."""
        if self._popularity is None:
            self._popularity = training_popularity(self.corpus, self.split)
        return self._popularity

    def candidate_fingerprints(self, which: str, protocol: str) -> tuple[np.ndarray, np.ndarray]:
        """(uint64 [num_eval] candidate-set fingerprints, int64 [num_eval] candidates ranked).

        Sampled protocols: the drawn candidates (the target and the negatives). Full ranking:
        the catalogue minus the excluded history (the target always stays), so two runs match
        when they rank every user against the same items, whatever made them.
        """
        key = (which, protocol)
        if key in self._fingerprints:
            return self._fingerprints[key]
        num_eval = len(self.split.users(which))
        if protocol != "full":
            drawn = self.candidates(which, protocol)
            rows, cols = np.nonzero(drawn != PAD_ID)  # row-major: rows come sorted
            fingerprints = per_user.set_fingerprints(rows, drawn[rows, cols], num_eval, protocol)
            self._fingerprints[key] = (fingerprints, np.bincount(rows, minlength=num_eval))
            return self._fingerprints[key]
        salt = f"full/{self.corpus.num_items}/exclude_history={self.config.exclude_history}"
        stride = self.corpus.num_items + 1
        excluded = np.zeros(0, np.int64)  # (row, item) keys: row * stride + item
        if self.config.exclude_history:
            starts = self.corpus.offsets[self.split.users(which)]
            lengths = self.split.history_ends(self.corpus, which) - starts
            rows = np.repeat(np.arange(num_eval, dtype=np.int64), lengths)
            first = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
            items = self.corpus.items[first + np.arange(len(rows))].astype(np.int64)
            excluded = np.unique(rows * stride + items)  # distinct items per row, rows sorted
            excluded = excluded[excluded % stride != self.split.targets(which)[excluded // stride]]
        rows = excluded // stride
        fingerprints = per_user.set_fingerprints(rows, excluded % stride, num_eval, salt)
        ranked = self.corpus.num_items - np.bincount(rows, minlength=num_eval)
        self._fingerprints[key] = (fingerprints, ranked.astype(np.int64))
        return self._fingerprints[key]

    def _results_info(self, which: str) -> dict[str, Any]:
        """What identifies an evaluation: the data, the split and every protocol's settings."""
        settings = {}
        for protocol in self.config.protocols:
            if protocol == "full":
                settings[protocol] = {"exclude_history": self.config.exclude_history}
            else:
                settings[protocol] = {
                    "num_negatives": self.config.num_negatives,
                    "candidate_seed": self.config.candidate_seed,
                }
        if self._corpus_fingerprint is None:
            self._corpus_fingerprint = candidates_lib.corpus_fingerprint(self.corpus)
        return {
            "dataset": self.corpus.name,
            "corpus": self._corpus_fingerprint,
            "split_mode": self.split.mode,
            **({} if self.split.cutoffs is None else {"cutoffs": list(self.split.cutoffs)}),
            "split": which,
            "num_items": self.corpus.num_items,
            "ks": list(self.config.ks),
            "protocols": settings,
        }
