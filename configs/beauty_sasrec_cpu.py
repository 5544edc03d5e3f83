"""SASRec (model.kind="sasrec") on Amazon Beauty within the hour of a 2-core CPU.

    python -m bert4rec_jax.train --config=configs/beauty_sasrec_cpu.py \
        --workdir=/tmp/beauty_sasrec_cpu --config.manual_dir=../shared/data

configs/beauty_cpu.py (BERT4Rec's CPU recipe) with the left-to-right model, so that the two
compare at one budget: the same encoder (d 64, 2 blocks, 2 heads, 50 positions), length buckets,
sampled softmax over 1,024 popularity negatives, batch 128, learning rate 1e-3, Adam beta2 0.98,
hidden dropout 0.3. Reasoned, not searched on Beauty (one run takes the hour):
- windows 50 apart (configs/ml_100k_sasrec.py): every training item is a target about once per
  epoch; the cloze fields (mask_prob, max_predictions) do not apply to next-item targets;
- the step count that takes about the CPU time of beauty_cpu.py's 50,000 steps (README, "Left to
  right: SASRec").
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
    c.input.sliding_step = 50
    return c
