"""Top-k recommendations for user histories of raw item ids, from an exported model.

    python -m bert4rec_jax.recommend --model=/tmp/bert4rec_export --history=12,7,33 --k=10
    python -m bert4rec_jax.recommend --model=/tmp/bert4rec_export --input=u.jsonl --output=r.jsonl
    python -m bert4rec_jax.recommend --model=/tmp/bert4rec_export --input=interactions.parquet \
        --output=recs.parquet
    python -m bert4rec_jax.recommend --model=/tmp/bert4rec_export --workdir=/tmp/bert4rec \
        --all_users --output=recs.parquet

From Python:

    rec = Recommender.load("/tmp/bert4rec_export")      # checks every file and the manifest
    result = rec.recommend([[12, 7, 33], [5, 8], []], k=10)
    result[0]              # [(raw item id, score), ...], best first
    result.errors          # per history: None, or why it got nothing (here [2]: "no item ids")
    result.unknown_ids     # per history: ids skipped because the model does not know them
    result.num_unknown     # their total

A history lists raw item ids (integers or strings, as the data set has them), oldest first, and
it is passed WHOLE: the model reads its last `max_len - 1` known items, and with `exclude_seen`
(the default) the exported function itself excludes every item of it, however old, so k unseen
items always come back while the catalogue has that many. Unknown ids are skipped and counted;
a history with no known id gets an error status and no recommendations, and the others are
served. `strict=True` / `--strict` refuses the first unknown id or empty history instead.

Input files (`--input`), by `--input_format` or the file's extension:
  * JSON lines (.jsonl, .json, .ndjson): one object per line, `{"user": ..., "history": [...]}`;
    "user" is optional and any JSON value (with a user-feature model: the raw user id).
  * CSV histories (.csv, .txt): `user,item,item,...` per line, no header.
  * Interactions (.parquet, or `--input_format=interactions` for a CSV with a header): one row
    per interaction, columns `user` and `item` (`--user_column`, `--item_column`) and optionally
    `timestamp` (`--timestamp_column`; a user's rows are ordered by it, else kept in file order).
    Rows must be grouped by user (as a file sorted by user is): the file is streamed, so a user
    whose rows are split gets one output row per run of rows.
The output (`--output`, default standard output) is JSON lines or, for .parquet, Parquet, one row
per user in input order: user, items, scores, unknown_ids, error (null when served). Jobs stream
in chunks of `--chunk_users` users, so memory does not grow with the number of users.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any

from absl import app, flags

from bert4rec_jax import cli
from bert4rec_jax.recommend.files import (
    OutputWriter,
    input_kind,
    input_size,
    iter_histories,
    iter_interactions,
)
from bert4rec_jax.recommend.job import (
    DEFAULT_CHUNK_USERS,
    Progress,
    recommend_all,
    workdir_users,
)
from bert4rec_jax.recommend.recommender import DEFAULT_BATCH_SIZE, Recommender


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
    flags.DEFINE_string("user", None, "With --history: the raw user id (user-feature models).")
    flags.DEFINE_string("input", None, "A file of users (JSON lines, CSV, Parquet; see --help).")
    flags.DEFINE_string("workdir", None, "With --all_users: a training run whose users to serve.")
    flags.DEFINE_bool("all_users", False, "Serve every user of --workdir's corpus.")
    flags.DEFINE_string("data_dir", None, "With --workdir: override the run's config.data_dir.")
    flags.DEFINE_string("output", "-", "Where the rows go: .parquet, else JSON lines; - = stdout.")
    flags.DEFINE_enum(
        "input_format", "auto", ["auto", "csv", "jsonl", "interactions"], "How --input is read."
    )
    flags.DEFINE_string("user_column", "user", "Interactions: the user id column.")
    flags.DEFINE_string("item_column", "item", "Interactions: the item id column.")
    flags.DEFINE_string("timestamp_column", "timestamp", "Interactions: orders a user's rows.")
    flags.DEFINE_integer("k", 10, "Items per history (at most the exported top_k).")
    flags.DEFINE_bool("exclude_seen", True, "Never recommend an item of the history.")
    flags.DEFINE_bool(
        "strict", False, "Stop at the first unknown item id or empty history (exit 1)."
    )
    flags.DEFINE_integer("batch_size", DEFAULT_BATCH_SIZE, "Histories run at once.")
    flags.DEFINE_integer("chunk_users", DEFAULT_CHUNK_USERS, "Users read and written at once.")
    flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")
    flags.mark_flags_as_required(["model"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    sources = [f.history is not None, f.input is not None, f.all_users]
    if sum(sources) != 1:
        raise app.UsageError("give exactly one of --history, --input and --workdir --all_users")
    if f.all_users != (f.workdir is not None):
        raise app.UsageError("--all_users and --workdir go together")
    writer = None
    try:
        recommender = Recommender.load(f.model, batch_size=f.batch_size)
        if f.history is not None:
            result = recommender.recommend(
                [f.history],
                f.k,
                users=None if f.user is None else [f.user],
                exclude_seen=f.exclude_seen,
                strict=f.strict,
                labels=["--history"],
            )
            if result.errors[0] is not None:
                sys.exit(f"error: --history has {result.errors[0]}: nothing to recommend from")
            print(format_table(result[0]))
            return
        if f.all_users:
            records, total = workdir_users(f.workdir, f.data_dir)
            unit = "users"
        else:
            path = pathlib.Path(f.input)
            kind = input_kind(path, f.input_format)
            total = input_size(path, kind)
            if kind == "interactions":
                records = iter_interactions(
                    path, f.user_column, f.item_column, f.timestamp_column or None
                )
                unit = "rows"
            else:
                records = iter_histories(path, kind)
                unit = "lines"
        writer = OutputWriter(f.output, recommender.vocabulary.dtype)
        summary = recommend_all(
            recommender,
            records,
            writer,
            f.k,
            exclude_seen=f.exclude_seen,
            strict=f.strict,
            chunk_users=f.chunk_users,
            progress=Progress(total, unit) if f.progress else None,
        )
        writer.close()
    except (ValueError, TypeError, OSError) as e:  # ArtifactError and ours are ValueErrors
        if writer is not None:
            writer.close()
        sys.exit(f"error: {e}")
    print(summary.text(), file=sys.stderr)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
