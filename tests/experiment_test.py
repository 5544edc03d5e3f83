"""Tests for bert4rec_jax.experiment: a parsed config turned into its corpus, split, model and
evaluator."""

import re

from helpers import tiny_config

from bert4rec_jax import experiment, sharding
from bert4rec_jax.config import RunConfig
from bert4rec_jax.datasets import prepared


def test_an_experiment_is_built_from_its_sections_alone(tmp_path):
    run = RunConfig.from_config_dict(tiny_config(tmp_path, split_mode="paper"))
    exp = experiment.Experiment.from_run(run)
    assert exp.config is run
    # The corpus is the config's data set, the model sized for it, the split of its mode.
    assert (exp.corpus.name, exp.corpus.num_users, exp.corpus.num_items) == ("synthetic", 200, 60)
    assert exp.model.config.vocab_size == exp.corpus.vocab_size == 62
    assert exp.model.config.max_len == run.model.max_len
    assert exp.split.mode == "paper"
    assert re.fullmatch(
        r"Data set synthetic: 200 users, 60 items, \d+ interactions, \d+ evaluated users "
        r"\(paper split\)",
        exp.describe(),
    )
    # The evaluator ranks with the eval section and caches candidates beside the data sets.
    evaluator = exp.evaluator(sharding.make_mesh())
    assert evaluator.config == run.eval
    assert evaluator.cache_dir == experiment.candidates_dir(run.data)
    assert experiment.candidates_dir(run.data) == (
        prepared.data_root(run.data.data_dir) / experiment.CANDIDATES_DIRNAME
    )
    # Prepared once: the second load reads the corpus cache and gives the same corpus.
    again = experiment.load_data(run.data)
    assert (again.items == exp.corpus.items).all() and again.name == exp.corpus.name
