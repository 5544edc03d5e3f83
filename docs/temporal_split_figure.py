"""Draws docs/temporal_split.png, the timeline of `split_mode="temporal"` (docs/evaluation.md).

    pip install matplotlib && python docs/temporal_split_figure.py

The users are the hand-made log of tests/datasets/temporal_split_test.py, split by the package's
own `temporal_split`, so the picture shows what the code does, not a drawing of it.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
DAY = 86_400
# (items, days) per user, and the two cut-offs (day 5 and day 8), as in the test.
LOG = [
    ([1, 2, 3, 4, 5], [1, 2, 5, 6, 9]),
    ([2, 3, 6], [1, 3, 4]),
    ([1, 6, 7], [2, 6, 7]),
    ([3, 8], [6, 9]),
]
VALID_START, TEST_START = "1970-01-06", "1970-01-09"
STYLE = {  # role -> (colour, marker, legend)
    "train": ("#4c72b0", "o", "training (before the first cut-off)"),
    "history": ("#9fb6d9", "o", "history only (after the first cut-off)"),
    "valid": ("#dd8452", "s", "validation target (first in [first, second))"),
    "test": ("#c44e52", "D", "test target (first at or after the second)"),
    "unused": ("#bbbbbb", "x", "not used"),
}


def roles(corpus, split) -> list[list[str]]:
    """Each interaction's role, user by user."""
    out = []
    valid, test = (
        dict(zip(split.users(w).tolist(), split.history_ends(corpus, w).tolist(), strict=True))
        for w in ("valid", "test")
    )
    for user in range(corpus.num_users):
        row = []
        for i in range(corpus.offsets[user], corpus.offsets[user + 1]):
            if i < split.train_ends[user]:
                row.append("train")
            elif valid.get(user) == i:
                row.append("valid")
            elif test.get(user) == i:
                row.append("test")
            elif user in test and i < test[user]:
                row.append("history")
            else:
                row.append("unused")
        out.append(row)
    return out


def main() -> None:
    sys.path.insert(0, str(ROOT))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bert4rec_jax.datasets import corpus as corpus_lib

    offsets = np.cumsum([0] + [len(items) for items, _ in LOG])
    corpus = corpus_lib.corpus_from_sequences(
        "log",
        np.arange(len(LOG)),
        offsets,
        np.concatenate([items for items, _ in LOG]),
        timestamps=np.concatenate([np.asarray(days) * DAY for _, days in LOG]),
    )
    split = corpus_lib.temporal_split(corpus, VALID_START, TEST_START)
    t1, t2 = (t / DAY for t in split.cutoffs)

    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=120)
    ax.axvspan(0, t1, color="#4c72b0", alpha=0.06)
    ax.axvspan(t1, t2, color="#dd8452", alpha=0.08)
    ax.axvspan(t2, 10, color="#c44e52", alpha=0.08)
    for t, label in ((t1, "first cut-off\n(valid_start)"), (t2, "second cut-off\n(test_start)")):
        ax.axvline(t, color="black", lw=1.2, ls="--")
        ax.text(t, len(LOG) - 0.35, label, ha="center", va="bottom", fontsize=8)
    seen = set()
    for user, ((items, days), row) in enumerate(zip(LOG, roles(corpus, split), strict=True)):
        y = len(LOG) - 1 - user
        ax.plot([min(days), max(days)], [y, y], color="#dddddd", lw=1, zorder=1)
        for item, day, role in zip(items, days, row, strict=True):
            colour, marker, legend = STYLE[role]
            ax.scatter(day, y, color=colour, marker=marker, s=70, zorder=2,
                       label=None if role in seen else legend)  # fmt: skip
            ax.annotate(str(item), (day, y), xytext=(0, 7), textcoords="offset points",
                        ha="center", fontsize=7)  # fmt: skip
            seen.add(role)
    ax.set_yticks(range(len(LOG)), [f"user {u}" for u in reversed(range(len(LOG)))])
    ax.set_xlim(0, 10)
    ax.set_ylim(-0.6, len(LOG) + 0.4)
    ax.set_xlabel("time (days); numbers above the marks are item ids")
    ax.set_title("split_mode=temporal: one timeline, two cut-offs", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    out = ROOT / "docs" / "temporal_split.png"
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
