"""SASRec as published (model.kind="sasrec") on Amazon Beauty within 45 minutes of a 2-core CPU.

    python -m bert4rec_jax.train --config=configs/beauty_sasrec_cpu.py \
        --workdir=/tmp/beauty_sasrec_cpu --config.manual_dir=../shared/data \
        --config.split_mode=paper

configs/beauty_cpu.py (BERT4Rec's CPU recipe: length buckets, the sampled softmax over 1,024
popularity-drawn negatives with the logQ correction, batch 128, learning rate 1e-3 after 200
warm-up steps, Adam beta2 0.98, 50,000 steps) with the published SASRec: d 64, 2 blocks, 2 heads,
a d x d feed-forward, LayerNorm epsilon 1e-8, and the paper's dropout for its sparse data sets
(0.5, Kang & McAuley 2018, Sec. IV-C), windows 50 apart (every training item a target about once
per epoch), and 16,000 steps instead of 50,000: on the standard split's validation (the 50,000-step
schedule, 10,000 users) pop100 NDCG@10 was 0.1940, 0.2131, 0.2169, 0.2161 at steps 4k, 8k, 12k,
16k, flat after 12k, so the learning rate decays to zero over the part that still helps and the
run fits in a third of the time. Results and how it was chosen: docs/results.md, "SASRec on
Beauty".
"""

import pathlib
import sys

# ml_collections loads a config file by its path: put this checkout's root first on the path, so
# that `configs` below is this file's own folder from any working directory.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import beauty_cpu  # noqa: E402


def get_config():
    c = beauty_cpu.get_config()
    c.model.kind = "sasrec"
    c.model.intermediate_size = 64  # the published point-wise FFN: d -> d -> d
    c.model.layer_norm_eps = 1e-8
    c.model.hidden_dropout = 0.5
    c.model.attention_dropout = 0.5
    c.input.sliding_step = 50
    c.num_train_steps = 16_000
    return c
