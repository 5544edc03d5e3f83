"""pmixer/SASRec.pytorch on this project's ML-100K split and protocol: the parity check of
docs/results.md ("SASRec as published, measured on MovieLens-100K").

Two steps in two environments, since the reference needs PyTorch and this project does not:

    # 1. with this project installed: the split, the histories and the pop100 candidates
    python benchmarks/pmixer_parity.py export --data=../shared/data --out=/tmp/ml100k_eval.npz
    # 2. in a venv with torch and numpy (CPU wheels), beside a checkout of pmixer/SASRec.pytorch at
    #    commit 25bd287 (its model.py at the root; the later python/model.py is post-LN by default)
    python benchmarks/pmixer_parity.py train --eval=/tmp/ml100k_eval.npz \
        --pmixer=/path/to/SASRec.pytorch --out=/tmp/pmixer_ce --epochs=200 --eval_every=10

`train` imports pmixer's `SASRec` network unchanged and trains it as its main.py does (Glorot
normal initialisation with zero padding rows, Adam 1e-3 with betas 0.9/0.98, batch 128, 200
positions, dropout 0.2; each epoch one window per user, the last 200 training items, in a
shuffled order) with the full softmax cross-entropy over the real positions (`--loss=bce`: its
original one-negative loss). Only the loop and the evaluation are ours: this project's protocol,
the same pop100 candidates, full ranking without the user's history, ties counted against the
model. Writes `<out>/time_to_quality.csv` and `.json` for `benchmarks/time_to_quality.py
--compare`, and `<out>/result.json` (the epoch chosen on validation, and its test).
"""

import argparse
import json
import os
import sys
import time

START = time.time()

import numpy as np  # noqa: E402


def export(args: argparse.Namespace) -> None:
    """Writes the corpus, the standard split's history ends and the pop100 candidates."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from bert4rec_jax.datasets import loading
    from bert4rec_jax.datasets.corpus import leave_one_out
    from bert4rec_jax.evaluation import candidates

    corpus = loading.load_corpus("ml-100k-raw", manual_dir=args.data, data_dir=args.data_dir)
    split = leave_one_out(corpus, "standard")
    out = {"offsets": corpus.offsets, "items": corpus.items, "num_items": corpus.num_items}
    out["eval_users"] = split.eval_users
    for which in ("valid", "test"):
        # The trainer's defaults: 100 negatives, candidate seed 1234.
        out[f"{which}_cands"] = candidates.draw_candidates(
            corpus, split, which, "pop100", 100, 1234
        )
        out[f"{which}_ends"] = split.history_ends(corpus, which)
    np.savez(args.out, **out)
    print(f"wrote {args.out}: {corpus.num_users} users, {corpus.num_items} items")


def ranks_of(scores, candidates, histories):
    """Pessimistic ranks of column 0 of `candidates` among them, and among every item but the
    user's history (padding 0 never a candidate): (pop100 ranks, full ranks), numpy [B] each."""
    import torch

    cands = torch.as_tensor(candidates.astype(np.int64))
    chosen = torch.gather(scores, 1, cands)
    target = chosen[:, :1]
    sampled = ((chosen[:, 1:] >= target) & (cands[:, 1:] != 0)).sum(1)
    full = scores.clone()
    full[:, 0] = -np.inf
    for row, history in enumerate(histories):
        full[row, torch.as_tensor(history.astype(np.int64))] = -np.inf
    full.scatter_(1, cands[:, :1], -np.inf)  # the target is not its own tie
    return sampled.numpy(), (full >= target).sum(1).numpy()


def at_10(ranks: np.ndarray) -> dict[str, float]:
    return {
        "ndcg@10": float(np.mean(np.where(ranks < 10, 1 / np.log2(ranks + 2), 0.0))),
        "hr@10": float(np.mean(ranks < 10)),
    }


def train(args: argparse.Namespace) -> None:
    import torch

    sys.path.insert(0, args.pmixer)
    from model import SASRec  # pmixer's network, unchanged

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    data = np.load(args.eval)
    offsets, items, num_items = data["offsets"], data["items"], int(data["num_items"])
    evaluated = set(data["eval_users"].tolist())
    sequences = {}  # user -> training items: all but the last two of an evaluated user
    for user in range(len(offsets) - 1):
        seq = items[offsets[user] : offsets[user + 1] - (2 if user in evaluated else 0)]
        if len(seq) > 1:
            sequences[user] = seq
    users = np.array(sorted(sequences))
    length = args.maxlen

    class Settings:  # the fields pmixer's SASRec reads from its argparse namespace
        device, hidden_units, maxlen, dropout_rate, num_blocks, num_heads = (
            "cpu", 50, length, 0.2, 2, 1
        )  # fmt: skip

    model = SASRec(len(offsets) - 1, num_items, Settings())
    for param in model.parameters():
        if param.dim() > 1:  # main.py's xavier_normal_, which skips what it cannot initialise
            torch.nn.init.xavier_normal_(param.data)
    model.pos_emb.weight.data[0, :] = 0
    model.item_emb.weight.data[0, :] = 0
    adam = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.98))

    def window(seq: np.ndarray) -> np.ndarray:  # left-padded, the last `length` items
        out = np.zeros(length, np.int64)
        tail = seq[-length:]
        out[length - len(tail) :] = tail
        return out

    def batch(rows: np.ndarray):
        seq = np.stack([window(sequences[u][:-1]) for u in rows])
        pos = np.stack([window(sequences[u][1:]) for u in rows])
        neg = np.zeros_like(pos)
        # BCE's one negative per real position, outside the user's training items.
        for r, user in enumerate(rows if args.loss == "bce" else []):
            forbid, real = set(sequences[user].tolist()), np.flatnonzero(pos[r])
            for j in real:
                draw = rng.integers(1, num_items + 1)
                while draw in forbid:
                    draw = rng.integers(1, num_items + 1)
                neg[r, j] = draw
        return seq, pos, neg

    def evaluate(which: str) -> dict[str, float]:
        model.eval()
        cands, ends = data[f"{which}_cands"], data[f"{which}_ends"]
        eval_users = data["eval_users"]
        sampled, full = [], []
        with torch.no_grad():
            for b in range(0, len(eval_users), 256):
                rows = eval_users[b : b + 256]
                stops = ends[b : b + 256]
                histories = [items[offsets[u] : e] for u, e in zip(rows, stops, strict=True)]
                h = model.log2feats(np.stack([window(x) for x in histories]))[:, -1, :]
                s, f = ranks_of(h @ model.item_emb.weight.T, cands[b : b + 256], histories)
                sampled.append(s)
                full.append(f)
        model.train()
        out = {f"pop100/{k}": v for k, v in at_10(np.concatenate(sampled)).items()}
        return out | {f"full/{k}": v for k, v in at_10(np.concatenate(full)).items()}

    os.makedirs(args.out, exist_ok=True)
    label = f"pmixer/SASRec.pytorch ({args.loss})"
    with open(os.path.join(args.out, "time_to_quality.json"), "w") as f:
        json.dump({"start": START, "label": label}, f)
    curve, best = [], None
    model.train()
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(users)
        for first in range(0, len(order), args.batch):
            seq, pos, neg = batch(order[first : first + args.batch])
            h = model.log2feats(seq)
            real = torch.as_tensor(pos != 0)
            if args.loss == "ce":  # the full softmax over the items, at the real positions
                logits = h[real] @ model.item_emb.weight.T
                logits[:, 0] = -1e9  # padding is never a label
                loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(pos)[real])
            else:  # pmixer's own loss: one positive and one negative per real position
                bce = torch.nn.functional.binary_cross_entropy_with_logits
                pos_logit = (h * model.item_emb(torch.as_tensor(pos))).sum(-1)[real]
                neg_logit = (h * model.item_emb(torch.as_tensor(neg))).sum(-1)[real]
                loss = bce(pos_logit, torch.ones_like(pos_logit))
                loss = loss + bce(neg_logit, torch.zeros_like(neg_logit))
            adam.zero_grad()
            loss.backward()
            adam.step()
        if epoch % args.eval_every:
            continue
        valid, test = evaluate("valid"), evaluate("test")
        seconds = time.time() - START
        curve.append((epoch, seconds, valid["pop100/ndcg@10"]))
        print(f"epoch {epoch} {seconds:.0f}s loss {loss.item():.4f} valid {valid} test {test}")
        if best is None or valid["pop100/ndcg@10"] > best["valid"]["pop100/ndcg@10"]:
            best = {"epoch": epoch, "seconds": seconds, "valid": valid, "test": test}
        with open(os.path.join(args.out, "time_to_quality.csv"), "w") as f:
            f.write("step,seconds,pop100/ndcg@10\n")
            f.writelines(f"{e},{s},{v}\n" for e, s, v in curve)
        with open(os.path.join(args.out, "result.json"), "w") as f:
            json.dump(best, f, indent=1)
    print("chosen on validation:", best)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="the split and candidates (this project's environment)")
    e.add_argument("--data", required=True, help="the folder holding ml-100k/")
    e.add_argument("--data_dir", default="", help="TFDS data directory ('' = the default)")
    e.add_argument("--out", required=True, help="the .npz to write")
    t = sub.add_parser("train", help="train and evaluate pmixer's model (torch's environment)")
    t.add_argument("--eval", required=True, help="the .npz `export` wrote")
    t.add_argument("--pmixer", required=True, help="a checkout of SASRec.pytorch at 25bd287")
    t.add_argument("--out", required=True)
    t.add_argument("--loss", default="ce", choices=["ce", "bce"])
    t.add_argument("--epochs", type=int, default=200)
    t.add_argument("--eval_every", type=int, default=10)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--maxlen", type=int, default=200)
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    export(args) if args.command == "export" else train(args)


if __name__ == "__main__":
    main()
