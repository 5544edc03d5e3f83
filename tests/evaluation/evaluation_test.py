"""bert4rec_jax.evaluation's package: its names resolve on first use, and importing it (as
`compare` and `report` do) loads no JAX."""

import pytest
from helpers import heavy_imports

from bert4rec_jax import evaluation
from bert4rec_jax.evaluation import candidates, metrics, per_user, ranking


def test_the_names_come_from_their_modules():
    assert evaluation.Evaluator is ranking.Evaluator
    assert evaluation.PROTOCOLS is candidates.PROTOCOLS
    assert evaluation.format_table is metrics.format_table
    assert evaluation.UserResults is per_user.UserResults
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        evaluation.Nothing  # noqa: B018


def test_importing_the_package_or_the_tools_loads_no_jax():
    assert heavy_imports("bert4rec_jax.evaluation", "bert4rec_jax.compare") == []
