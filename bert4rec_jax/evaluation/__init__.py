"""Leave-one-out evaluation, in parts with one job each.

candidates.py  the sampled protocols' negatives: drawing, and a cache on disk
metrics.py     ranks -> HR@k, NDCG@k, MRR (also by history length); top-k lists -> coverage,
               popularity, novelty; the results tables
per_user.py    every evaluated user's outcome, per protocol, and its Parquet file
stats.py       paired bootstrap and Student-t intervals (`compare`, `report`)
ranking.py     the jitted rankers on the mesh, `EvalConfig` and the `Evaluator` (inputs: `scoring`)

  evaluator = Evaluator(corpus, split, run.eval, fns, mesh=mesh)
  results = evaluator.evaluate(params, "valid")
  users = evaluator.user_results(params, "test")  # per user; evaluator.summary(users)

The names below are imported when first used: `compare` and `report` read per-user files and
results without importing JAX (ranking.py's).
"""

import importlib
from typing import Any

_EXPORTS = {
    "PROTOCOLS": "candidates",
    "SAMPLED_PROTOCOLS": "candidates",
    "SPLITS": "candidates",
    "EvalConfig": "ranking",
    "Evaluator": "ranking",
    "accuracy_metrics": "metrics",
    "format_beyond_table": "metrics",
    "format_history_table": "metrics",
    "format_table": "metrics",
    "ranking_metrics": "metrics",
    "UserResults": "per_user",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
