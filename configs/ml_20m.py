"""BERT4Rec on MovieLens-20m, the paper's preprocessed file and recipe.

    python -m bert4rec_jax.train --config=configs/ml_20m.py --workdir=/tmp/bert4rec_ml20m

Paper (Table 2, pop-100): HR@1 0.3440, HR@5 0.6323, HR@10 0.7473, NDCG@5 0.4967,
NDCG@10 0.5340, MRR 0.4785.
"""

import pathlib
import sys

# ml_collections loads a config file by its path: put this checkout's root first on the path, so
# that `configs` below is this file's own folder from any working directory.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import default, paper_recipe  # noqa: E402


def get_config():
    c = paper_recipe.apply(default.get_config())
    c.dataset = "ml-20m"
    c.model.max_len = 200
    c.model.hidden_size = 64
    c.model.num_layers = 2
    c.model.num_heads = 2
    c.model.intermediate_size = 256
    c.model.hidden_dropout = 0.1
    c.model.attention_dropout = 0.1
    c.input.mask_prob = 0.2
    c.input.max_predictions = 20
    c.input.sliding_step = 100  # 0.5 * max_len
    return c
