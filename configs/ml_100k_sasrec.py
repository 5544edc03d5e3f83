"""SASRec (model.kind="sasrec") on MovieLens-100K from raw ratings, with the full softmax loss.

    python -m bert4rec_jax.train --config=configs/ml_100k_sasrec.py \
        --workdir=/tmp/sasrec_ml100k --config.manual_dir=../shared/data

The same encoder, embeddings and tied head as BERT4Rec, with causal attention, trained to predict
the next item at every position and scored at the history's last item. The starting point is the
outside check of issue 21 (pmixer/SASRec.pytorch's hyper-parameters: d 50, 2 blocks, 200
positions, one head, dropout 0.2, Adam 1e-3 with beta2 0.98 and no weight decay, batch 128) with
Klenitskiy & Vasilev's full softmax cross-entropy instead of the one-negative BCE. Other losses:
`--config.loss.type=bce` (the original SASRec), `--config.loss.type=gbce
--config.loss.num_negatives=256` (gSASRec, t = 0.75).

Not measured yet: the learning rate (2e-3), the 800 steps and the buckets are a first guess, not
chosen on validation (the one run started reached step 69 on a CPU shared by many jobs).
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
    c.model.max_len = 200  # the last 200 items at test time, scored at the last one
    c.model.hidden_size = 50
    c.model.num_layers = 2
    c.model.num_heads = 1
    c.model.intermediate_size = 200
    c.model.hidden_dropout = 0.2
    c.model.attention_dropout = 0.2
    c.loss.type = "full"
    # Windows of 201 items (200 inputs, each with its next item); a longer history is cut into
    # windows 200 apart, so every training item is a target about once per epoch.
    c.input.sliding_step = 200
    # Half of ML-100K's users have fewer than ~65 training items: without buckets most of a
    # 200-position step is padding. Three bucket shapes, each compiled once.
    c.input.buckets = (64, 128, 200)
    c.batch_size = 128
    c.num_train_steps = 800
    c.learning_rate = 2e-3
    c.warmup_steps = 50
    c.weight_decay = 0.0
    c.adam_b2 = 0.98
    c.eval.every_steps = 200
    c.eval.protocols = ("pop100", "full")
    c.eval.metric = "pop100/ndcg@10"
    return c
