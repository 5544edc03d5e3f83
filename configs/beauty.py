"""BERT4Rec on Amazon Beauty, the paper's recipe (its run script for beauty).

    python -m bert4rec_jax.train --config=configs/beauty.py --workdir=/tmp/bert4rec_beauty

Paper (Table 2, pop-100): HR@1 0.0953, HR@5 0.2207, HR@10 0.3025, NDCG@5 0.1599,
NDCG@10 0.1862, MRR 0.1701.
"""

import pathlib
import sys

# ml_collections loads a config file by its path: put this checkout's root first on the path, so
# that `configs` below is this file's own folder from any working directory.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import default, paper_recipe  # noqa: E402


def get_config():
    c = paper_recipe.apply(default.get_config())
    c.dataset = "beauty"
    c.model.max_len = 50
    c.model.hidden_size = 64
    c.model.num_layers = 2
    c.model.num_heads = 2
    c.model.intermediate_size = 256
    c.model.hidden_dropout = 0.5
    c.model.attention_dropout = 0.2
    c.input.mask_prob = 0.6
    c.input.max_predictions = 30
    c.input.sliding_step = 5  # 0.1 * max_len
    return c
