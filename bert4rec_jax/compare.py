"""Pairs two runs user by user: is B better than A beyond noise?

    python -m bert4rec_jax.compare RUN_A RUN_B
    python -m bert4rec_jax.compare /tmp/ablations/ml100k /tmp/ablations/ml100k-weight2
    python -m bert4rec_jax.compare 'runs/bce/seed*' runs/ce/seed0,runs/ce/seed1 --metrics=ndcg@10

Each side is one run or several (seeds): a comma-separated list of workdirs, per-user files
(*.parquet) or glob patterns of local paths, where a directory that is not a workdir stands for
the workdirs inside it. A workdir's per-user file is the trainer's (`test_users.parquet`,
`valid_users.parquet`) or else `evaluate`'s (`eval_<model>_<split>_users.parquet`).

For each protocol and metric it prints B - A over the users both sides evaluated on the same
targets and candidates: the means, the difference with a 95% paired-bootstrap interval, the
p-value of the paired bootstrap test, and how many users B ranks better, worse or the same.
Several runs on a side are pooled: a user's metric is averaged over the side's runs, and the
bootstrap resamples the runs as well as the users (docs/evaluation_tools.md says why). Runs on
other data, other held-out items or other candidates are refused, with the reason. Reads files
only: no JAX, seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
from collections.abc import Sequence

import numpy as np
from absl import flags
from etils import epath

from bert4rec_jax import cli
from bert4rec_jax import workdir as workdir_lib
from bert4rec_jax.evaluation.per_user import UserResults
from bert4rec_jax.evaluation.stats import PairedDifference, paired_bootstrap

FLAGS = flags.FLAGS
Run = tuple[str, UserResults]  # (where it was read from, its per-user results)


def per_user_file(run: epath.Path, split: str, model: str = "bert4rec") -> epath.Path:
    """A workdir's per-user file of `split`: the trainer's, or else `evaluate`'s for `model`.

    Raises:
      FileNotFoundError: naming the files looked for.
    """
    trainer = {"test": workdir_lib.TEST_USERS_FILE, "valid": workdir_lib.VALID_USERS_FILE}[split]
    names = [trainer] if model == "bert4rec" else []
    names.append(workdir_lib.eval_users_file(model, split))
    for name in names:
        if (run / name).exists():
            return run / name
    raise FileNotFoundError(
        f"{run} holds no per-user results ({' nor '.join(names)}): run "
        f"`python -m bert4rec_jax.evaluate --workdir={run} --split={split} --model={model}`"
    )


def side_files(spec: str, split: str, model: str = "bert4rec") -> list[epath.Path]:
    """The per-user files of one side: `spec` is a comma-separated list of workdirs, .parquet
    files, directories of workdirs and glob patterns of any of these."""
    paths: list[epath.Path] = []
    for part in (p for p in spec.split(",") if p):
        # Patterns are expanded on this machine's files; a gs:// run is named, or its directory.
        matches = sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
        if not matches:
            raise FileNotFoundError(f"{part!r} matches nothing")
        for match in matches:
            path = epath.Path(match)
            if path.suffix == ".parquet" or (path / workdir_lib.CONFIG_FILE).exists():
                paths.append(
                    path if path.suffix == ".parquet" else per_user_file(path, split, model)
                )
                continue
            inside = sorted(p for p in path.iterdir() if (p / workdir_lib.CONFIG_FILE).exists())
            if not inside:
                raise FileNotFoundError(
                    f"{path} is neither a workdir (no {workdir_lib.CONFIG_FILE}), a .parquet file "
                    f"nor a directory of workdirs"
                )
            paths.extend(per_user_file(p, split, model) for p in inside)
    if not paths:
        raise ValueError(f"{spec!r} names no run")
    return paths


def run_name(path: epath.Path) -> str:
    """How a run is named in the output: its workdir, or the file when it is not in one."""
    inside = (path.parent / workdir_lib.CONFIG_FILE).exists()
    return f"{path.parent} ({path.name})" if inside else str(path)


def _positions(users: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Where each of `wanted` (all present) is in `users`."""
    order = np.argsort(users, kind="stable")
    return order[np.searchsorted(users[order], wanted)]


def _check_same(reference: Run, run: Run, users: np.ndarray, protocols: Sequence[str]) -> None:
    """Refuses `run` unless it evaluated `users` as `reference` did: same data, held-out item,
    targets and, for every protocol, candidates."""
    (ref_name, ref), (name, other) = reference, run
    both = f"{ref_name} and {name}"
    for field, what in (("dataset", "data set"), ("corpus", "corpus fingerprint")):
        if ref.info[field] != other.info[field]:
            raise ValueError(
                f"runs on different data: {what} {ref.info[field]!r} in {ref_name}, "
                f"{other.info[field]!r} in {name}"
            )
    if ref.info["split"] != other.info["split"]:
        raise ValueError(
            f"{ref_name} holds {ref.info['split']} results, {name} {other.info['split']} results"
        )
    i, j = _positions(ref.users, users), _positions(other.users, users)
    differ = int((ref.targets[i] != other.targets[j]).sum())
    if differ:
        modes = (ref.info.get("split_mode"), other.info.get("split_mode"))
        why = f" (split modes {modes[0]} and {modes[1]})" if modes[0] != modes[1] else ""
        raise ValueError(
            f"targets differ for {differ} of {len(users)} users between {both}{why}: they held "
            f"out different items"
        )
    for protocol in protocols:
        for who, results in (reference, run):
            if protocol not in results.ranks:
                raise ValueError(f"{who} has no {protocol} results (it has {list(results.ranks)})")
        differ = int((ref.candidates[protocol][i] != other.candidates[protocol][j]).sum())
        if differ:
            a, b = ref.info["protocols"][protocol], other.info["protocols"][protocol]
            settings = [
                f"{k}={a.get(k)} vs {b.get(k)}" for k in sorted({*a, *b}) if a.get(k) != b.get(k)
            ]
            raise ValueError(
                f"{protocol} candidates differ for {differ} of {len(users)} users between {both}"
                f" ({', '.join(settings) or 'same settings: another draw or split'})"
            )


@dataclasses.dataclass(frozen=True)
class Comparison:
    """What `compare` found.

    Attributes:
      rows: (protocol, metric, the paired difference B - A) per protocol and metric.
      num_users: users paired.
      runs_a, runs_b: where each side's runs were read from.
      info: the reference run's metadata (data set, split, ...).
    """

    rows: list[tuple[str, str, PairedDifference]]
    num_users: int
    runs_a: list[str]
    runs_b: list[str]
    info: dict


def compare(
    a: Sequence[Run],
    b: Sequence[Run],
    *,
    protocols: Sequence[str] | None = None,
    metrics: Sequence[str] = ("ndcg@10", "hr@10", "mrr"),
    resamples: int = 10_000,
    seed: int = 0,
    common_users: bool = False,
) -> Comparison:
    """B - A per protocol and metric, over the users every run evaluated alike.

    Args:
      a, b: each side's runs (several: seeds of one recipe, pooled).
      protocols: default: every protocol all runs have, in the first run's order.
      metrics: per-user metrics ("hr@k", "ndcg@k", "mrr").
      resamples, seed: the bootstrap's (`stats.paired_bootstrap`).
      common_users: pair the users all runs share when their sets differ, instead of refusing.

    Raises:
      ValueError: when the runs cannot be paired, saying why.
    """
    runs = [*a, *b]
    if not a or not b:
        raise ValueError("each side needs at least one run")
    if protocols is None:
        protocols = [p for p in runs[0][1].protocols if all(p in r.ranks for _, r in runs)]
        if not protocols:
            raise ValueError(
                "the runs share no protocol: " + "; ".join(f"{n}: {list(r.ranks)}" for n, r in runs)
            )
    users = functools.reduce(np.intersect1d, [r.users for _, r in runs])
    reference_users = np.unique(runs[0][1].users)
    for name, results in runs[1:]:
        if not common_users and not np.array_equal(np.unique(results.users), reference_users):
            raise ValueError(
                f"{runs[0][0]} evaluated {len(runs[0][1].users)} users, {name} "
                f"{len(results.users)}, {len(users)} in common: pass --common_users to compare "
                f"on those"
            )
    if not len(users):
        raise ValueError("the runs have no evaluated user in common")
    for run in runs[1:]:
        _check_same(runs[0], run, users, protocols)

    def values(side: Sequence[Run], protocol: str) -> np.ndarray:  # [M, S, n]
        return np.stack(
            [
                [r.metric_per_user(protocol, m)[_positions(r.users, users)] for _, r in side]
                for m in metrics
            ]
        )

    rows = []
    for protocol in protocols:
        found = paired_bootstrap(
            values(a, protocol), values(b, protocol), resamples=resamples, seed=seed
        )
        rows.extend((protocol, m, d) for m, d in zip(metrics, found, strict=True))
    return Comparison(rows, len(users), [n for n, _ in a], [n for n, _ in b], runs[0][1].info)


def _p(difference: PairedDifference) -> str:
    smallest = 2 / (difference.resamples + 1)  # the test cannot say less than this
    return f"<={smallest:.2g}" if difference.p_value <= smallest else f"{difference.p_value:.2g}"


def _side(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{len(names)} runs: {', '.join(names)}"


def format_comparison(found: Comparison, fmt: str = "markdown") -> str:
    """The comparison as a Markdown table with a header, or as CSV."""
    if fmt == "csv":
        lines = ["protocol,metric,a,b,difference,low,high,p_value,better,worse,same,users"]
        for protocol, metric, d in found.rows:
            numbers = (d.mean_a, d.mean_b, d.difference, d.low, d.high, d.p_value)
            counts = (d.better, d.worse, d.same, d.num_users)
            lines.append(",".join([protocol, metric, *map(repr, numbers), *map(str, counts)]))
        return "\n".join(lines)
    info = found.info
    resamples = found.rows[0][2].resamples if found.rows else 0
    pooled = len(found.runs_a) > 1 or len(found.runs_b) > 1
    lines = [
        f"A: {_side(found.runs_a)}",
        f"B: {_side(found.runs_b)}",
        f"{info['dataset']}, {info['split']} split ({info.get('split_mode')}), {found.num_users} "
        f"users with the same targets and candidates. B - A with a 95% paired-bootstrap "
        f"interval ({resamples} resamples of the users"
        + (", and of each side's runs" if pooled else "")
        + "); p: the paired bootstrap test; better/worse/same: users.",
        "",
        "| protocol | metric | A | B | B - A | 95% interval | p | better | worse | same |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for protocol, metric, d in found.rows:
        lines.append(
            f"| {protocol} | {metric} | {d.mean_a:.4f} | {d.mean_b:.4f} | {d.difference:+.4f} | "
            f"[{d.low:+.4f}, {d.high:+.4f}] | {_p(d)} | {d.better} | {d.worse} | {d.same} |"
        )
    return "\n".join(lines)


def define_flags() -> None:
    """The command line's flags (defined only when this module runs as the program: other
    commands define flags of the same names)."""
    flags.DEFINE_enum("split", "test", ["test", "valid"], "Which held-out item's per-user results.")
    flags.DEFINE_enum(
        "model", "bert4rec", ["bert4rec", "popularity"], "Which `evaluate` file, for a workdir the "
        "trainer wrote no per-user file into."
    )  # fmt: skip
    flags.DEFINE_list(
        "protocols", None, "Protocols to compare; default: every one both sides have."
    )
    flags.DEFINE_list("metrics", ["ndcg@10", "hr@10", "mrr"], "hr@k, ndcg@k (any k) and mrr.")
    flags.DEFINE_integer("resamples", 10_000, "Bootstrap resamples.")
    flags.DEFINE_integer("seed", 0, "The resampling's seed.")
    flags.DEFINE_enum("format", "markdown", ["markdown", "csv"], "How the table is printed.")
    flags.DEFINE_bool(
        "common_users", False, "Compare on the users both sides evaluated when their sets differ "
        "(e.g. an eval.num_users sample) instead of refusing."
    )  # fmt: skip


def main(argv: list[str]) -> None:
    sides = argv[1:]
    if len(sides) != 2:
        raise ValueError(
            f"give two sides, RUN_A and RUN_B (each a run or a comma-separated list of runs), "
            f"not {len(sides)}: {' '.join(sides) or 'nothing'}"
        )
    a, b = (
        [(run_name(p), UserResults.read(p)) for p in side_files(s, FLAGS.split, FLAGS.model)]
        for s in sides
    )
    found = compare(
        a,
        b,
        protocols=FLAGS.protocols,
        metrics=FLAGS.metrics,
        resamples=FLAGS.resamples,
        seed=FLAGS.seed,
        common_users=FLAGS.common_users,
    )
    print(format_comparison(found, FLAGS.format))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
