"""Top-k recommendations for user histories of raw item ids, from an exported model.

    python -m bert4rec_jax.recommend --model=/tmp/bert4rec_export --history=12,7,33 --k=10
    python -m bert4rec_jax.recommend --model=/tmp/bert4rec_export --input=users.csv --output=r.jsonl

From Python:

    rec = Recommender.load("/tmp/bert4rec_export")      # checks every file's sha256 first
    result = rec.recommend([[12, 7, 33], [5, 8]], k=10)
    result[0]              # [(raw item id, score), ...], best first
    result.unknown_ids     # per history, ids skipped because the model does not know them
    result.num_unknown     # their total

A history lists raw item ids (integers or strings, as the data set has them), oldest first; the
model reads its last `max_len - 1` known items. Unknown ids are skipped and counted (a warning says
how many), or refused with `strict=True` / `--strict`. With `exclude_seen` (the default) no item of
the history comes back, however old.

Input files (`--input`), chosen by `--input_format` or the file's extension:
  * JSON lines (.jsonl, .json, .ndjson): one object per line, `{"user": ..., "history": [...]}`;
    "user" is optional and any JSON value.
  * CSV (anything else): `user,item,item,...` per line, no header; the first field is the user's
    label, the rest the history (quoting as Python's csv module reads it).
Blank lines are skipped. The output (`--output`, default standard output) is JSON lines, one per
input line in order: `{"user": ..., "recommendations": [{"item": ..., "score": ...}, ...],
"unknown_ids": n}`.
"""

from __future__ import annotations

import collections.abc
import csv
import dataclasses
import json
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging

from bert4rec_jax import artifact, cli

DEFAULT_BATCH_SIZE = 1024
JSON_LINES_SUFFIXES = (".jsonl", ".json", ".ndjson")


class UnknownItemError(ValueError):
    """A history holds a raw id the model does not know (with strict=True)."""


class EmptyHistoryError(ValueError):
    """A history holds no item the model knows."""


class InputFileError(ValueError):
    """A line of an input file cannot be read as a history."""


@dataclasses.dataclass(frozen=True)
class Recommendations(collections.abc.Sequence):
    """What `Recommender.recommend` returns: a sequence with one entry per history.

    Attributes:
      items: per history, (raw item id, score) pairs, best first; fewer than k only when fewer
        than k of the exported top_k best items lie outside the history (a catalogue hardly
        larger than the history, or a history longer than the model's window).
      unknown_ids: per history, how many of its ids were skipped as unknown.
    """

    items: tuple[list[tuple[Any, float]], ...]
    unknown_ids: tuple[int, ...]

    def __getitem__(self, index):
        return self.items[index]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_unknown(self) -> int:
        """Unknown ids skipped over all histories."""
        return sum(self.unknown_ids)


@dataclasses.dataclass(frozen=True)
class EncodedHistories:
    """Histories as the exported function reads them.

    Attributes:
      windows: int32 [n, max_len - 1]; each history's last known items as dense ids, oldest
        first, padded at the end with 0.
      older: {row: int32 [m]} dense ids of the known items before the window (long histories).
      unknown_ids: int64 [n]; ids skipped per history.
    """

    windows: np.ndarray
    older: dict[int, np.ndarray]
    unknown_ids: np.ndarray


def _key_function(kind: str) -> Callable[[Any], Any]:
    """Raw id -> the vocabulary's key for it, or None when it cannot be one.

    Integer vocabularies accept integers and their decimal strings (command lines, CSV); string
    vocabularies accept strings, bytes (UTF-8) and integers (JSON numbers), compared as text.
    """
    if kind in "iu":

        def integer_key(raw: Any) -> int | None:
            if isinstance(raw, bool | np.bool_):
                return None
            if isinstance(raw, int | np.integer):
                return int(raw)
            if isinstance(raw, str | bytes):
                try:
                    return int(raw)
                except ValueError:
                    return None
            if isinstance(raw, float | np.floating) and float(raw).is_integer():
                return int(raw)
            return None

        return integer_key

    def string_key(raw: Any) -> str | None:
        if isinstance(raw, str):
            return str(raw)
        if isinstance(raw, bytes):
            return raw.decode("utf-8", errors="replace")
        if isinstance(raw, int | np.integer) and not isinstance(raw, bool | np.bool_):
            return str(int(raw))
        return None

    return string_key


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class Recommender:
    """An exported model, ready to recommend; build it with `Recommender.load`."""

    def __init__(
        self,
        directory: pathlib.Path,
        manifest: dict[str, Any],
        vocabulary: np.ndarray,
        params: dict[str, Any],
        exported: jax.export.Exported,
        batch_size: int,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be positive")
        self.directory = directory
        self.manifest = manifest
        self.batch_size = batch_size
        if vocabulary.dtype.kind == "S":
            vocabulary = vocabulary.astype(str)
        self.vocabulary = vocabulary
        self.vocabulary.flags.writeable = False
        self._key = _key_function(vocabulary.dtype.kind)
        # raw -> dense through a dict: the one lookup that takes ints and strings alike.
        self._dense = {self._key(raw): i for i, raw in enumerate(vocabulary.tolist()) if i > 0}
        # Sorted copy for histories given as numpy arrays of the vocabulary's kind (vectorised).
        self._sorted_order = np.argsort(vocabulary[1:], kind="stable") + 1  # [V] dense ids
        self._sorted_raw = vocabulary[self._sorted_order]  # [V]
        self._params = jax.device_put(params)
        self._serve = jax.jit(exported.call)

    @classmethod
    def load(
        cls, directory: str | pathlib.Path, *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Recommender:
        """Loads an export directory after checking every file against its manifest.

        Args:
          directory: written by `export.export_model` / `python -m bert4rec_jax.export`.
          batch_size: histories run at once; batches are padded to powers of two up to this, so
            a few compiled shapes serve every request size.

        Returns:
          The recommender.

        Raises:
          artifact.ArtifactError: naming the file, when one is missing, altered or unreadable;
            nothing is loaded then.
        """
        directory = pathlib.Path(directory)
        manifest = artifact.read_verified_manifest(directory)

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

        vocabulary = read(artifact.VOCABULARY, read_npy)
        flat = read(artifact.PARAMS, read_npz)
        for name, file in artifact.SEPARATE_PARAMS.items():
            flat[name] = read(file, read_npy)
        params = artifact.unflatten_params(flat)
        exported = read(
            artifact.SERVING_FN, lambda p: jax.export.deserialize(bytearray(p.read_bytes()))
        )
        num_items = int(manifest["num_items"])
        if vocabulary.ndim != 1 or len(vocabulary) != num_items + 1:
            raise artifact.ArtifactError(
                f"{directory / artifact.VOCABULARY} holds {vocabulary.shape} ids; the manifest "
                f"says {num_items} items (+1 for padding)"
            )
        history = exported.in_avals[-2]
        if history.shape[1] != manifest["history_length"]:
            raise artifact.ArtifactError(
                f"{directory / artifact.SERVING_FN} reads histories of {history.shape[1]} items; "
                f"the manifest says {manifest['history_length']}"
            )
        return cls(directory, manifest, vocabulary, params, exported, batch_size)

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

    def _dense_ids(self, history: Any, where: str, strict: bool) -> tuple[np.ndarray, list[Any]]:
        """(dense ids int32 of the known items in order, the unknown raw ids)."""
        if isinstance(history, str | bytes) or not isinstance(history, collections.abc.Iterable):
            raise TypeError(
                f"{where}: expected a sequence of item ids, got {type(history).__name__} "
                "(recommend takes a list of histories)"
            )
        vocab_kind = "iu" if self.vocabulary.dtype.kind in "iu" else "U"
        if (
            isinstance(history, np.ndarray)
            and history.ndim == 1
            and history.dtype.kind in vocab_kind
        ):
            # Vectorised: binary search in the sorted raw ids.
            at = np.searchsorted(self._sorted_raw, history)
            at = np.minimum(at, len(self._sorted_raw) - 1)
            found = self._sorted_raw[at] == history
            dense = self._sorted_order[at[found]].astype(np.int32)
            unknown = history[~found].tolist()
        else:
            dense_list, unknown = [], []
            for raw in history:
                try:
                    i = self._dense.get(self._key(raw))
                except TypeError:  # unhashable: a list inside a history
                    i = None
                if i is None:
                    unknown.append(raw)
                else:
                    dense_list.append(i)
            dense = np.asarray(dense_list, np.int32)
        if strict and unknown:
            more = f" (and {len(unknown) - 1} more unknown ids)" if len(unknown) > 1 else ""
            raise UnknownItemError(
                f"{where}: item id {unknown[0]!r} is not in the model's vocabulary of "
                f"{self.num_items} items{more}"
            )
        if not len(dense):
            what = f"only unknown item ids ({len(unknown)})" if unknown else "no item ids"
            raise EmptyHistoryError(f"{where} has {what}: nothing to recommend from")
        return dense, unknown

    def encode(
        self,
        histories: Sequence[Sequence[Any]],
        *,
        strict: bool = False,
        labels: Sequence[str] | None = None,
    ) -> EncodedHistories:
        """Maps histories of raw ids to the exported function's input.

        Args:
          histories: per user, raw item ids, oldest first.
          strict: refuse unknown ids instead of skipping them.
          labels: names of the histories for error messages (default "histories[i]").

        Returns:
          The encoded histories.

        Raises:
          UnknownItemError: with strict, naming the first unknown id and its history.
          EmptyHistoryError: naming a history with no known item.
        """
        if isinstance(histories, str | bytes) or not isinstance(
            histories, collections.abc.Sequence
        ):
            raise TypeError(
                f"histories: expected a list of histories, got {type(histories).__name__}"
            )
        width = self.history_length
        windows = np.zeros((len(histories), width), np.int32)
        older: dict[int, np.ndarray] = {}
        unknown = np.zeros(len(histories), np.int64)
        examples: list[Any] = []
        for row, history in enumerate(histories):
            where = labels[row] if labels is not None else f"histories[{row}]"
            dense, skipped = self._dense_ids(history, where, strict)
            unknown[row] = len(skipped)
            examples.extend(skipped[: 5 - len(examples)])
            if len(dense) > width:
                older[row] = dense[:-width]
                dense = dense[-width:]
            windows[row, : len(dense)] = dense
        if unknown.any():
            logging.warning(
                "Skipped %d unknown item ids in %d of %d histories (e.g. %s)",
                int(unknown.sum()),
                int((unknown > 0).sum()),
                len(histories),
                ", ".join(repr(x) for x in examples),
            )
        return EncodedHistories(windows, older, unknown)

    def run(self, windows: np.ndarray, exclude_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The exported function on encoded histories, in batches.

        Args:
          windows: int32 [n, history_length] dense ids (`encode`).
          exclude_seen: drop each row's own items.

        Returns:
          (dense ids int32 [n, top_k], scores float32 [n, top_k]); excluded items score -inf.
        """
        pending = []
        for start in range(0, len(windows), self.batch_size):
            chunk = windows[start : start + self.batch_size]
            # Padded to a power of two: a handful of compiled batch sizes serve every request.
            size = min(_pow2(len(chunk)), self.batch_size)
            padded = np.zeros((size, windows.shape[1]), np.int32)
            padded[: len(chunk)] = chunk
            exclude = np.full(size, bool(exclude_seen))
            pending.append((self._serve(self._params, padded, exclude), len(chunk)))
        ids = [np.asarray(i)[:n] for (i, _), n in pending]
        scores = [np.asarray(s)[:n] for (_, s), n in pending]
        top_k = self.top_k
        return (
            np.concatenate(ids) if ids else np.zeros((0, top_k), np.int32),
            np.concatenate(scores) if scores else np.zeros((0, top_k), np.float32),
        )

    def recommend(
        self,
        histories: Sequence[Sequence[Any]],
        k: int = 10,
        *,
        exclude_seen: bool = True,
        strict: bool = False,
        labels: Sequence[str] | None = None,
    ) -> Recommendations:
        """The k best items for each history.

        Args:
          histories: per user, raw item ids (ints or strings), oldest first.
          k: items per history, at most the exported top_k.
          exclude_seen: never return an item of the history (all of it, not only the window
            the model reads).
          strict: refuse unknown ids (UnknownItemError) instead of skipping and counting them.
          labels: names of the histories in error messages.

        Returns:
          Per history, [(raw id, score)] best first; `.unknown_ids` counts skipped ids.

        Raises:
          ValueError: k out of range; UnknownItemError, EmptyHistoryError (naming the history).
        """
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
        encoded = self.encode(histories, strict=strict, labels=labels)
        ids, scores = self.run(encoded.windows, exclude_seen)  # [n, top_k] each
        # -inf marks excluded items; they only fill rows that ran out of other items.
        keep = ~np.isneginf(scores)  # [n, top_k]
        if exclude_seen:
            # The function excluded the window; older items of long histories are dropped here.
            for row, old in encoded.older.items():
                keep[row] &= ~np.isin(ids[row], old)
        raw = self.vocabulary[ids]  # [n, top_k]
        items = []
        for row in range(len(ids)):
            chosen = np.flatnonzero(keep[row])[:k]
            items.append(
                list(zip(raw[row, chosen].tolist(), scores[row, chosen].tolist(), strict=True))
            )
        return Recommendations(tuple(items), tuple(int(u) for u in encoded.unknown_ids))


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def read_histories(path: pathlib.Path, input_format: str = "auto") -> tuple[list, list, list]:
    """Reads an input file (formats in the module docstring).

    Args:
      path: the file.
      input_format: "csv", "jsonl", or "auto" (by extension: .jsonl/.json/.ndjson are JSON lines).

    Returns:
      (users, histories, labels "<file>:<line> (user ...)"), one entry per non-blank line.

    Raises:
      InputFileError: naming the file and line of a malformed line.
    """
    if input_format == "auto":
        input_format = "jsonl" if path.suffix.lower() in JSON_LINES_SUFFIXES else "csv"
    users, histories, labels = [], [], []
    with open(path, newline="", encoding="utf-8") as f:
        if input_format == "jsonl":
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputFileError(f"{where}: not valid JSON ({e})") from e
                if not isinstance(record, dict) or not isinstance(record.get("history"), list):
                    raise InputFileError(
                        f'{where}: expected an object with a "history" list, e.g. '
                        '{"user": "u1", "history": [12, 7]}'
                    )
                users.append(record.get("user"))
                histories.append(record["history"])
                labels.append(f"{where} (user {record.get('user')!r})")
        elif input_format == "csv":
            for number, row in enumerate(csv.reader(f), 1):
                fields = [field.strip() for field in row]
                if not any(fields):
                    continue
                users.append(fields[0])
                histories.append([x for x in fields[1:] if x])
                labels.append(f"{path}:{number} (user {fields[0]!r})")
        else:
            raise ValueError(f"input_format={input_format!r}: expected auto, csv or jsonl")
    return users, histories, labels


def format_table(pairs: list[tuple[Any, float]]) -> str:
    """Ranked (raw id, score) pairs as an aligned table."""
    width = max([len("item")] + [len(str(item)) for item, _ in pairs])
    lines = [f"{'rank':>4}  {'item':<{width}}  score"]
    lines += [
        f"{rank:>4}  {str(item):<{width}}  {score:.4f}"
        for rank, (item, score) in enumerate(pairs, 1)
    ]
    return "\n".join(lines)


def define_flags() -> None:
    """The command line's flags (defined only when this module runs as the program)."""
    flags.DEFINE_string("model", None, "An export directory (python -m bert4rec_jax.export).")
    flags.DEFINE_list("history", None, "One history: raw item ids, oldest first, comma-separated.")
    flags.DEFINE_string("input", None, "A file of histories (CSV or JSON lines; see --help).")
    flags.DEFINE_string(
        "output", "-", "Where --input's recommendations go (JSON lines); - = stdout."
    )
    flags.DEFINE_enum("input_format", "auto", ["auto", "csv", "jsonl"], "How --input is read.")
    flags.DEFINE_integer("k", 10, "Items per history (at most the exported top_k).")
    flags.DEFINE_bool("exclude_seen", True, "Never recommend an item of the history.")
    flags.DEFINE_bool("strict", False, "Refuse unknown item ids instead of skipping them.")
    flags.DEFINE_integer("batch_size", DEFAULT_BATCH_SIZE, "Histories run at once.")
    flags.mark_flags_as_required(["model"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    if (f.history is None) == (f.input is None):
        raise app.UsageError("give exactly one of --history and --input")
    try:
        recommender = Recommender.load(f.model, batch_size=f.batch_size)
        if f.history is not None:
            result = recommender.recommend(
                [f.history],
                f.k,
                exclude_seen=f.exclude_seen,
                strict=f.strict,
                labels=["--history"],
            )
            print(format_table(result[0]))
            return
        users, histories, labels = read_histories(pathlib.Path(f.input), f.input_format)
        result = recommender.recommend(
            histories, f.k, exclude_seen=f.exclude_seen, strict=f.strict, labels=labels
        )
    except (ValueError, TypeError, OSError) as e:  # ArtifactError and ours are ValueErrors
        sys.exit(f"error: {e}")
    lines = [
        json.dumps(
            {
                "user": user,
                "recommendations": [{"item": item, "score": score} for item, score in pairs],
                "unknown_ids": unknown,
            }
        )
        for user, pairs, unknown in zip(users, result.items, result.unknown_ids, strict=True)
    ]
    text = "".join(line + "\n" for line in lines)
    if f.output == "-":
        sys.stdout.write(text)
    else:
        pathlib.Path(f.output).write_text(text)
        logging.info("Wrote %d recommendations to %s", len(lines), f.output)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
