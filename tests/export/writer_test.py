"""Tests for bert4rec_jax.export.writer: export_model's directory, its refusals, user features."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import SERVED_TOP_K, in_process_top_k, ml_100k_config, random_model

from bert4rec_jax import experiment, export, recommend
from bert4rec_jax.config import RunConfig
from bert4rec_jax.export import artifact


def test_export_refuses_a_non_empty_output(random_export):
    output, vocabulary, _ = random_export
    model, params = random_model()
    with pytest.raises(FileExistsError, match=re.escape(str(output))):
        export.export_model(model, params, vocabulary, output, saved_model=False)


@pytest.mark.slow
def test_user_features_are_served(tmp_path, shared_data):
    # Random parameters of a user-feature model (no training): what is tested is the plumbing,
    # raw user id -> feature row inside the artifact.
    config = ml_100k_config(tmp_path, shared_data, **{"model.user_features": "add"})
    exp = experiment.Experiment.from_run(RunConfig.from_config_dict(config))
    corpus = exp.corpus
    shapes = jax.eval_shape(
        lambda: exp.model.init(
            jax.random.key(0),
            jnp.zeros((1, config.model.max_len), jnp.int32),
            jnp.zeros((1, 1), jnp.int32),
            train=False,
        )["params"]
    )
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(np.float32), shapes)
    output = tmp_path / "export"
    export.export_model(exp.model, params, corpus.raw_item_ids, output, top_k=SERVED_TOP_K,
                        user_ids=corpus.raw_user_ids, saved_model=False,
                        platforms=["cpu"])  # fmt: skip
    rec = recommend.Recommender.load(output)
    assert (output / artifact.USERS).exists() and rec.manifest["num_users"] == corpus.num_users
    picked = [0, 5, 17]
    histories = [corpus.sequence(u).astype(np.int32) for u in picked]
    raw = [corpus.raw_item_ids[h] for h in histories]
    known = rec.recommend(raw, k=SERVED_TOP_K, users=corpus.raw_user_ids[picked].tolist())
    want_ids, _ = in_process_top_k(exp, params, histories, users=np.array(picked) + 1)
    assert [[i for i, _ in items] for items in known] == corpus.raw_item_ids[want_ids].tolist()
    # An unknown raw user, and no user at all, get the "unknown" row 0.
    anonymous = rec.recommend(raw, k=SERVED_TOP_K, users=["no-such-user", None, 10**9])
    unknown_ids, _ = in_process_top_k(exp, params, histories, users=np.zeros(3, np.int32))
    assert [[i for i, _ in items] for items in anonymous] == corpus.raw_item_ids[
        unknown_ids
    ].tolist()
    assert rec.recommend(raw, k=SERVED_TOP_K).items == anonymous.items
    assert known.items != anonymous.items
