"""A tiny config for tests: synthetic data, a small model, a few steps, one CPU.

python -m bert4rec_jax.train --config=configs/tiny.py --workdir=/tmp/bert4rec_tiny
"""

import pathlib
import sys

# ml_collections loads a config file by its path: put this checkout's root first on the path, so
# that `configs` below is this file's own folder from any working directory.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import default  # noqa: E402


def get_config():
    c = default.get_config()
    c.dataset = "synthetic"
    c.synthetic.num_users = 200
    c.synthetic.num_items = 60
    c.model.max_len = 20
    c.model.hidden_size = 16
    c.model.num_layers = 1
    c.model.num_heads = 2
    c.model.intermediate_size = 32
    c.model.hidden_dropout = 0.1
    c.model.attention_dropout = 0.1
    c.input.max_predictions = 5
    c.input.sliding_step = 5
    c.input.dupe_factor = 2
    c.batch_size = 16
    c.num_train_steps = 20
    c.warmup_steps = 5
    c.log_every_steps = 5
    c.checkpoint_every_steps = 10
    c.eval.every_steps = 10
    c.eval.batch_size = 64
    c.eval.item_chunk = 32
    return c
