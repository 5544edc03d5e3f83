"""BERT4Rec on Steam, the paper's preprocessed file and recipe.

    python -m bert4rec_jax.train --config=configs/steam.py --workdir=/tmp/bert4rec_steam

Paper (Table 2, pop-100): HR@1 0.0957, HR@5 0.2710, HR@10 0.4013, NDCG@5 0.1842,
NDCG@10 0.2261, MRR 0.1949.
"""

import pathlib
import sys

# ml_collections loads a config file by its path: put this checkout's root first on the path, so
# that `configs` below is this file's own folder from any working directory.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import default, paper_recipe  # noqa: E402


def get_config():
    c = paper_recipe.apply(default.get_config())
    c.dataset = "steam"
    c.num_train_steps = 800_000
    c.model.max_len = 50
    c.model.hidden_size = 256
    c.model.num_layers = 2
    c.model.num_heads = 8
    c.model.intermediate_size = 1024
    # The shared data notes list no dropout for Steam; 0.2 is the other short-sequence recipes'.
    c.model.hidden_dropout = 0.2
    c.model.attention_dropout = 0.2
    c.input.mask_prob = 0.4
    c.input.max_predictions = 20
    c.input.sliding_step = 25  # 0.5 * max_len
    return c
