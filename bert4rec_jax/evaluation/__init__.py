"""Leave-one-out evaluation, in three parts with one job each.

candidates.py  the sampled protocols' negatives: drawing, and a cache on disk
metrics.py     ranks -> HR@k, NDCG@k, MRR, and the results table
ranking.py     the jitted rankers on the mesh, `EvalConfig` and the `Evaluator` (inputs: `scoring`)

  evaluator = Evaluator(corpus, split, run.eval, fns, mesh=mesh)
  results = evaluator.evaluate(params, "valid")
"""

from bert4rec_jax.evaluation.candidates import PROTOCOLS, SAMPLED_PROTOCOLS, SPLITS
from bert4rec_jax.evaluation.metrics import format_table, ranking_metrics
from bert4rec_jax.evaluation.ranking import EvalConfig, Evaluator

__all__ = [
    "PROTOCOLS",
    "SAMPLED_PROTOCOLS",
    "SPLITS",
    "EvalConfig",
    "Evaluator",
    "format_table",
    "ranking_metrics",
]
