"""Times evaluation of every Beauty user: candidate drawing, pop100 scoring and full ranking.

    python benchmarks/evaluation.py --data=../shared/data/beauty.txt
    python benchmarks/evaluation.py --data=../shared/data/beauty.txt --batch_size=1024 \
        --item_chunk=8192 --protocols=full

Uses a randomly initialised BERT4Rec (hidden 64, 2 layers, 2 heads, max_len 50: the paper's Beauty
model), so the metrics printed are those of an untrained model (about chance); the times are what
this measures. The popularity baseline's metrics are printed too, as a sanity check of the numbers.
Prints times, never asserts them.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bert4rec_jax import evaluation, models, scoring, sharding  # noqa: E402
from bert4rec_jax.datasets.corpus import Corpus, corpus_from_sequences, leave_one_out  # noqa: E402

DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "beauty.txt"


def read_beauty(path: pathlib.Path) -> Corpus:
    """The paper's file: `user item` per line, each user's lines consecutive and in time order."""
    pairs = np.loadtxt(path, dtype=np.int64)  # [interactions, 2]
    users = pairs[:, 0]
    starts = np.flatnonzero(np.diff(users)) + 1
    offsets = np.concatenate([[0], starts, [len(users)]])
    return corpus_from_sequences("beauty", users[offsets[:-1]], offsets, pairs[:, 1])


def bert4rec_fns(corpus: Corpus, seed: int) -> tuple[scoring.ScoringFns, dict]:
    """(scoring functions, params) of a randomly initialised paper-size Beauty BERT4Rec."""
    config = models.ModelConfig(
        vocab_size=corpus.vocab_size,
        max_len=50,
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        intermediate_size=256,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        layer_norm_eps=1e-12,
        init_std=0.02,
        dtype=jnp.float32,
        attention_impl=None,
    )
    model = models.BERT4Rec(config)
    ids = np.zeros((1, config.max_len), np.int32)
    params = model.init(jax.random.key(seed), ids, np.zeros((1, 1), np.int32), train=False)
    return scoring.scoring_fns(model), params["params"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA)
    parser.add_argument("--split", default="test", choices=evaluation.SPLITS)
    parser.add_argument("--protocols", default="pop100,full")
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--item_chunk", type=int, default=16384)
    parser.add_argument("--num_users", type=int, default=0, help="0 = all")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"jax {jax.__version__}, devices: {jax.devices()}")
    start = time.perf_counter()
    corpus = read_beauty(args.data)
    split = leave_one_out(corpus, "standard")
    print(
        f"read {args.data.name}: {corpus.num_users} users, {corpus.num_items} items, "
        f"{len(split.eval_users)} evaluated, {time.perf_counter() - start:.2f} s"
    )
    protocols = tuple(args.protocols.split(","))
    mesh = sharding.make_mesh()
    config = evaluation.EvalConfig(
        max_len=50, protocols=protocols, batch_size=args.batch_size, item_chunk=args.item_chunk
    )
    models_to_time = {
        "bert4rec (random init)": bert4rec_fns(corpus, args.seed),
        "popularity": scoring.popularity_fns(corpus),
    }

    with tempfile.TemporaryDirectory() as cache_dir:
        for name, (fns, p) in models_to_time.items():
            evaluator = evaluation.Evaluator(
                corpus, split, config, fns, mesh=mesh, cache_dir=cache_dir
            )
            start = time.perf_counter()
            evaluator.inputs(args.split)
            print(f"inputs: {time.perf_counter() - start:.2f} s")
            for protocol in protocols:
                if protocol in evaluation.SAMPLED_PROTOCOLS:
                    start = time.perf_counter()
                    evaluator.candidates(args.split, protocol)
                    print(
                        f"{protocol} candidates (drawn and saved, or read back): "
                        f"{time.perf_counter() - start:.2f} s"
                    )
            rows = evaluator.user_sample(args.num_users)
            p = jax.device_put(p, sharding.replicated(mesh))
            # One protocol at a time (each encodes the users), then all of them as `evaluate`
            # does (users encoded once). The first call compiles; the second is steady state.
            for group in [(protocol,) for protocol in protocols] + [protocols]:
                times = []
                for _ in range(2):
                    start = time.perf_counter()
                    ranks = evaluator.rank_targets(p, args.split, group, rows)
                    times.append(time.perf_counter() - start)
                print(
                    f"{name:24s} {'+'.join(group):12s} {len(rows)} users: {times[1]:7.2f} s "
                    f"(first call, with compilation: {times[0]:.2f} s)"
                )
            results = {}
            for protocol in protocols:
                for metric, value in evaluation.ranking_metrics(ranks[protocol], (1, 10)).items():
                    results[f"{protocol}/{metric}"] = value
            print(evaluation.format_table(results))


if __name__ == "__main__":
    main()
