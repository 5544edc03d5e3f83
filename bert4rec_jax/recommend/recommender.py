"""The Recommender: an exported model loaded and checked, run on batches of histories."""

from __future__ import annotations

import collections.abc
import dataclasses
import pathlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from bert4rec_jax import sharding
from bert4rec_jax.export import artifact
from bert4rec_jax.recommend.ids import EncodedHistories, IdMap

# Histories run through the exported function at once, from measurements on the 2-core CPU at
# the ML-1m shape (benchmarks/recommend.py): in the sweep of issue 17, batches of 8-64 served
# 3,800-4,700 histories/s and 256-1,024 served 490-570; under a load average of 11, full
# windows (199 items) served 700-770/s at batches of 2-8, 540 at 16 and 250 at 32, while
# windows of 64 items served 2,000-2,500/s at every batch of 4-32. Above the cliff the
# activations ([batch, window, 256] per layer) leave the caches; 8 is on the fast side of it in
# every measurement. With the last block computed for the [MASK] row only (export), four sweeps
# under loads of 3-9 still put 8 and 16 on top, within noise of each other (8: 823-1,836,
# 16: 1,266-1,538, 32: 596-1,375 histories/s; 8 ahead in two, 16 in one), so 8 stays.
DEFAULT_BATCH_SIZE = 8


@dataclasses.dataclass(frozen=True)
class Recommendations(collections.abc.Sequence):
    """What `Recommender.recommend` returns: a sequence with one entry per history.

    Attributes:
      items: per history, (raw item id, score) pairs, best first: k of them, fewer only when
        the catalogue has fewer than k items outside the history; [] for a history in error.
      unknown_ids: per history, how many of its ids were skipped as unknown.
      errors: per history, None when served, else why not ("no item ids", "no known item
        ids"): such a history gets no recommendations.
    """

    items: tuple[list[tuple[Any, float]], ...]
    unknown_ids: tuple[int, ...]
    errors: tuple[str | None, ...]

    def __getitem__(self, index):
        return self.items[index]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_unknown(self) -> int:
        """Unknown ids skipped over all histories."""
        return sum(self.unknown_ids)

    @property
    def num_failed(self) -> int:
        """Histories that got no recommendations (an error status)."""
        return sum(e is not None for e in self.errors)


def _padded(rows: Sequence[np.ndarray], size: int, minimum: int = 8) -> np.ndarray:
    """int32 [size, w]: the rows left-aligned, padded with 0; w a power of two >= the longest.

    Powers of two, so that a handful of compiled history lengths serve every request.
    """
    width = sharding.pow2(max([minimum] + [len(r) for r in rows]))
    out = np.zeros((size, width), np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


class Recommender:
    """An exported model, ready to recommend; build it with `Recommender.load`."""

    def __init__(
        self,
        directory: pathlib.Path,
        manifest: dict[str, Any],
        vocabulary: np.ndarray,
        params: dict[str, Any],
        exported: jax.export.Exported,
        encoder: jax.export.Exported,
        user_vocabulary: np.ndarray | None,
        batch_size: int,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be positive")
        self.directory = directory
        self.manifest = manifest
        self.batch_size = batch_size
        self.ids = IdMap(vocabulary, user_vocabulary)
        # rec.encode(histories, users=..., strict=..., labels=...) -> EncodedHistories: raw ids
        # mapped as the exported functions read them (the id map's own method).
        self.encode = self.ids.encode
        self.vocabulary = self.ids.vocabulary
        self.user_vocabulary = user_vocabulary
        self._flat_item_table = (params["item_embedding"], params["output_bias"])
        self._params = jax.device_put(params)
        self._serve = jax.jit(exported.call)
        self._encode = jax.jit(encoder.call)

    @classmethod
    def load(
        cls, directory: str | pathlib.Path, *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Recommender:
        """Loads an export directory after checking its files and its manifest.

        Args:
          directory: written by `export.export_model` / `python -m bert4rec_jax.export`.
          batch_size: histories run at once; batches are padded to powers of two up to this, so
            a few compiled shapes serve every request size.

        Returns:
          The recommender.

        Raises:
          artifact.ArtifactError: naming the file or the manifest's field, when a file is
            missing, altered or unreadable, or the manifest disagrees with itself or the files;
            nothing is loaded then.
        """
        directory = pathlib.Path(directory)
        manifest = artifact.read_verified_manifest(directory)
        artifact.check_manifest(manifest)

        def read(name: str, reader: Callable[[pathlib.Path], Any]) -> Any:
            try:
                return reader(directory / name)
            except Exception as e:  # a verified file that still cannot be read
                raise artifact.ArtifactError(
                    f"{directory / name} cannot be read ({type(e).__name__}: {e})"
                ) from e

        def read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
            with np.load(path, allow_pickle=False) as saved:
                return {k: saved[k] for k in saved.files}

        def read_npy(path: pathlib.Path) -> np.ndarray:
            return np.load(path, allow_pickle=False)

        def deserialize(path: pathlib.Path) -> jax.export.Exported:
            return jax.export.deserialize(bytearray(path.read_bytes()))

        vocabulary = read(artifact.VOCABULARY, artifact.read_raw_ids)
        flat = read(artifact.PARAMS, read_npz)
        for name, file in artifact.SEPARATE_PARAMS.items():
            flat[name] = read(file, read_npy)
        arrays = dict(flat, **{artifact.VOCABULARY: vocabulary})
        user_vocabulary = None
        if manifest["user_features"]:
            user_vocabulary = arrays[artifact.USERS] = read(artifact.USERS, artifact.read_raw_ids)
        # The manifest's shapes against the files (check_manifest tied them to num_items etc.).
        for name, shape in manifest["shapes"].items():
            have = list(np.shape(arrays[name])) if name in arrays else None
            if have != shape:
                raise artifact.ArtifactError(
                    f"{artifact.MANIFEST}: shapes[{name!r}] is {shape}, but the artifact holds "
                    f"{have}: the manifest was edited or the artifact is damaged"
                )
        exported = read(artifact.SERVING_FN, deserialize)
        encoder = read(artifact.ENCODE_FN, deserialize)
        # The functions' signatures against the manifest.
        for field, got, want in (
            ("top_k", exported.out_avals[0].shape[1], manifest["top_k"]),
            ("hidden_size", encoder.out_avals[0].shape[1] - 1, manifest["hidden_size"]),
            ("serving.inputs", len(exported.in_avals) - len(flat), 3),
        ):
            if got != want:
                raise artifact.ArtifactError(
                    f"{artifact.MANIFEST}: {field} is {want}, but {artifact.SERVING_FN} / "
                    f"{artifact.ENCODE_FN} give {got}: the manifest was edited or the artifact "
                    "is damaged"
                )
        _warn_on_version_difference(manifest)
        params = artifact.unflatten_params(flat)
        return cls(
            directory, manifest, vocabulary, params, exported, encoder, user_vocabulary, batch_size
        )

    @property
    def top_k(self) -> int:
        """The most items one history can get (fixed at export)."""
        return int(self.manifest["top_k"])

    @property
    def history_length(self) -> int:
        """The model reads a history's last this many known items (max_len - 1)."""
        return int(self.manifest["history_length"])

    @property
    def num_items(self) -> int:
        return int(self.manifest["num_items"])

    def _batches(
        self, histories: Sequence[np.ndarray] | np.ndarray, users: np.ndarray | None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(history [size, w], users [size], rows) per batch, padded to powers of two.

        Rows go shortest first: the exported encoder reads a window as wide as the batch's
        history (up to max_len - 1), so a batch of short histories costs what they are long.
        """
        n = len(histories)
        users = np.zeros(n, np.int32) if users is None else np.asarray(users, np.int32)
        if isinstance(histories, np.ndarray):
            lengths = np.count_nonzero(histories, axis=1)
        else:
            lengths = np.fromiter((len(h) for h in histories), np.int64, n)
        order = np.argsort(lengths, kind="stable")
        for start in range(0, n, self.batch_size):
            rows = order[start : start + self.batch_size]
            size = min(sharding.pow2(len(rows)), self.batch_size)
            batch_users = np.zeros(size, np.int32)
            batch_users[: len(rows)] = users[rows]
            chunk = [histories[i] for i in rows]
            yield _padded(chunk, size), batch_users, rows

    def run(
        self,
        histories: Sequence[np.ndarray] | np.ndarray,
        users: np.ndarray | None = None,
        exclude_seen: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The exported function on encoded histories, in batches.

        Args:
          histories: per history, int32 dense ids, oldest first (whole; 0 = padding), as a list
            of arrays or a padded [n, s] array.
          users: int32 [n] user rows (default: all unknown).
          exclude_seen: drop each row's own items.

        Returns:
          (dense ids int32 [n, top_k], scores float32 [n, top_k]); excluded items score -inf
          and come last, only in rows with fewer than top_k other items.
        """
        return self._gather(self._dispatch(histories, users, exclude_seen), len(histories))

    def _dispatch(
        self,
        histories: Sequence[np.ndarray] | np.ndarray,
        users: np.ndarray | None,
        exclude_seen: bool,
    ) -> list[tuple[Any, np.ndarray]]:
        """Starts `run`'s batches without waiting for their results: jax runs them on its own
        threads while the caller goes on (a job reads, maps ids and writes meanwhile);
        `_gather` waits for them."""
        pending = []
        for history, batch_users, rows in self._batches(histories, users):
            exclude = np.full(len(batch_users), bool(exclude_seen))
            pending.append((self._serve(self._params, history, batch_users, exclude), rows))
        return pending

    def _gather(
        self, pending: list[tuple[Any, np.ndarray]], n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """`run`'s result from `_dispatch`'s batches of n histories (waiting for them)."""
        ids = np.zeros((n, self.top_k), np.int32)
        scores = np.zeros((n, self.top_k), np.float32)
        for (batch_ids, batch_scores), rows in pending:
            ids[rows] = np.asarray(batch_ids)[: len(rows)]
            scores[rows] = np.asarray(batch_scores)[: len(rows)]
        return ids, scores

    def user_vectors(
        self, histories: Sequence[np.ndarray] | np.ndarray, users: np.ndarray | None = None
    ) -> np.ndarray:
        """float32 [n, hidden + 1]: the exported encode function on encoded histories.

        Dotted with `item_vectors()` they give the model's scores (the output bias is the last
        coordinate, 1 on the user side).
        """
        out = np.zeros((len(histories), int(self.manifest["hidden_size"]) + 1), np.float32)
        for history, batch_users, rows in self._batches(histories, users):
            out[rows] = np.asarray(self._encode(self._params, history, batch_users))[: len(rows)]
        return out

    def item_vectors(self) -> np.ndarray:
        """float32 [num_items, hidden + 1]: row j is dense item j + 1's [embedding, output bias]."""
        table, bias = self._flat_item_table
        return np.concatenate(
            [table[1 : self.num_items + 1], bias[1 : self.num_items + 1, None]], 1
        )

    def recommend(
        self,
        histories: Sequence[Sequence[Any]],
        k: int = 10,
        *,
        users: Sequence[Any] | None = None,
        exclude_seen: bool = True,
        strict: bool = False,
        labels: Sequence[str] | None = None,
    ) -> Recommendations:
        """The k best items for each history.

        Args:
          histories: per user, raw item ids (ints or strings), oldest first, whole.
          k: items per history, at most the exported top_k.
          users: per history, the raw user id (models with user features read it).
          exclude_seen: never return an item of the history (all of it: the exported function
            excludes every item it is given).
          strict: refuse the first unknown id (UnknownItemError) or empty history
            (EmptyHistoryError) instead of reporting them per history.
          labels: names of the histories in error messages.

        Returns:
          Per history, [(raw id, score)] best first; `.errors` says which histories got nothing
          and why, `.unknown_ids` counts skipped ids.

        Raises:
          ValueError: k out of range; with strict, UnknownItemError or EmptyHistoryError.
        """
        self.check_k(k)
        encoded = self.encode(histories, users=users, strict=strict, labels=labels)
        return self.collect(encoded, self.start(encoded, exclude_seen), k)

    def start(self, encoded: EncodedHistories, exclude_seen: bool) -> list[tuple[Any, Any]]:
        """`_dispatch` for the histories of `encoded` that can be served."""
        served = [i for i, e in enumerate(encoded.errors) if e is None]
        return self._dispatch(
            [encoded.histories[i] for i in served], encoded.users[served], exclude_seen
        )

    def collect(
        self, encoded: EncodedHistories, pending: list[tuple[Any, Any]], k: int
    ) -> Recommendations:
        """`recommend`'s result from `start`'s batches (waiting for them)."""
        served = [i for i, e in enumerate(encoded.errors) if e is None]
        ids, scores = self._gather(pending, len(served))  # [served, top_k] each
        raw = self.vocabulary[ids[:, :k]].tolist()  # [served][k]
        top = scores[:, :k]  # [served, k]
        # -inf marks excluded items: only rows that ran out of other items reach them.
        counts = np.count_nonzero(~np.isneginf(top), axis=1).tolist()
        top_scores = top.tolist()
        items: list[list[tuple[Any, float]]] = [[] for _ in encoded.errors]
        for row, i in enumerate(served):
            n = counts[row]
            items[i] = list(zip(raw[row][:n], top_scores[row][:n], strict=True))
        return Recommendations(
            tuple(items), tuple(encoded.unknown_ids.tolist()), tuple(encoded.errors)
        )

    def check_k(self, k: int) -> None:
        if not isinstance(k, int | np.integer) or not 1 <= k <= self.top_k:
            more = (
                f"export again with --top_k={k} for more"
                if isinstance(k, int | np.integer) and self.top_k < k <= self.num_items
                else f"the model has {self.num_items} items"
            )
            raise ValueError(
                f"k={k}: must be in 1..{self.top_k}, the top_k this model was exported with "
                f"({more})"
            )


def _warn_on_version_difference(manifest: dict[str, Any]) -> None:
    """Logs a warning when the libraries that exported differ from the running ones."""
    import importlib.metadata

    differ = []
    for package, exported in sorted(manifest.get("versions", {}).items()):
        if package == "tensorflow":
            continue  # only the SavedModel's readers need it
        try:
            running = jax.__version__ if package == "jax" else importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            running = "not installed"
        if running != exported:
            differ.append(f"{package} {exported} (running {running})")
    if differ:
        logging.warning(
            "The artifact was exported with %s; it should still load (jax.export keeps "
            "compatibility for 6 months), but export again if results look off",
            ", ".join(differ),
        )
