"""The first MovieLens-100K recipe (the ML-1m model sized for a CPU), kept for its row in
docs/results.md.

configs/ml_100k.py replaced it: this one trains 2,000 steps (12-18 min on the 2-core CPU) and its
loss flattens at about 5.6 from step ~1,000; see docs/results.md, "Measured on
MovieLens-100K", for the comparison.

    python -m bert4rec_jax.train --config=configs/ml_100k_v1.py --workdir=/tmp/bert4rec_ml100k \
        --config.manual_dir=../shared/data   # offline copy holding ml-100k/u.data

Uses the standard split: validation picks the best checkpoint, test reports it.
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
    c.model.max_len = 100  # covers the median history (65 ratings) in one window
    c.model.hidden_size = 64
    c.model.num_layers = 2
    c.model.num_heads = 2
    c.model.intermediate_size = 256
    c.model.hidden_dropout = 0.2
    c.model.attention_dropout = 0.2
    c.input.mask_prob = 0.2
    c.input.max_predictions = 20
    c.input.sliding_step = 50
    c.input.dupe_factor = 10
    c.batch_size = 128
    c.num_train_steps = 2000
    c.learning_rate = 1e-3
    c.warmup_steps = 100
    c.eval.every_steps = 500
    c.eval.protocols = ("pop100", "full")
    c.eval.metric = "pop100/ndcg@10"
    return c
