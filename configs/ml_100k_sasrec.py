"""SASRec as published (model.kind="sasrec") on MovieLens-100K from raw ratings, with the full
softmax cross-entropy (Klenitskiy & Vasilev's SASRec+) instead of the original one-negative BCE.

    python -m bert4rec_jax.train --config=configs/ml_100k_sasrec.py \
        --workdir=/tmp/sasrec_ml100k --config.manual_dir=../shared/data

The model is pmixer/SASRec.pytorch's own settings (d 50, 2 blocks, one head, dropout 0.2, Adam
with beta2 0.98 and no weight decay, batch 128) with the published d x d feed-forward. Chosen on
validation (seed 0, standard split, `benchmarks/search.py`; docs/results.md, "SASRec as
published"): 50 positions rather than 100 or 200 (cheaper per step, so more steps in the budget,
which mattered more), learning rate 1e-2 (2e-3 learnt far slower; 5e-3 was within noise), 800
steps (validation flattened after ~500-800 at either rate), batch 128 (64 was within noise at
the same CPU time), dropout 0.2 (0.5 underfit).
"""

import pathlib
import sys

# ml_collections loads a config file by its path: put this checkout's root first on the path, so
# that `configs` below is this file's own folder from any working directory.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import default  # noqa: E402


def get_config():
    c = default.get_config()
    c.dataset = "ml-100k-raw"
    c.split_mode = "standard"
    c.model.kind = "sasrec"
    c.model.max_len = 50  # the last 50 items at test time, scored at the last one
    c.model.hidden_size = 50
    c.model.num_layers = 2
    c.model.num_heads = 1
    c.model.intermediate_size = 50  # the published point-wise FFN: d -> d -> d
    c.model.layer_norm_eps = 1e-8  # SASRec's
    c.model.hidden_dropout = 0.2
    c.model.attention_dropout = 0.2
    c.loss.type = "full"
    # Windows of 51 items (50 inputs, each with its next item); a longer history is cut into
    # windows 50 apart, so every training item is a target about once per epoch.
    c.input.sliding_step = 50
    # A quarter of ML-100K's users have fewer than ~32 training items: three bucket shapes, each
    # compiled once, keep short windows from paying for 50 positions.
    c.input.buckets = (16, 32, 50)
    c.batch_size = 128
    c.num_train_steps = 800
    c.learning_rate = 1e-2
    c.warmup_steps = 50
    c.weight_decay = 0.0
    c.adam_b2 = 0.98
    c.eval.every_steps = 100
    c.eval.protocols = ("pop100", "full")
    c.eval.metric = "pop100/ndcg@10"
    return c
