"""models/__init__.py: `build_model` picks the kind and the feature tables; `with_config`."""

import dataclasses

import numpy as np
import pytest

from bert4rec_jax import models


def test_build_model_picks_the_kind_and_sets_the_vocabulary():
    for kind, cls in (("bert4rec", models.BERT4Rec), ("sasrec", models.SASRec)):
        model = models.build_model(models.ModelConfig(kind=kind), 12)
        assert type(model) is cls and model.config.vocab_size == 12


def test_feature_tables_only_when_their_switch_is_on():
    items = {"genre": np.zeros((12, 2), np.int32)}
    users = {"age": np.zeros((5, 1), np.int32)}
    plain = models.build_model(models.ModelConfig(), 12, items, users)
    assert not plain.tables.items and not plain.tables.users
    both = models.build_model(
        models.ModelConfig(item_features=True, user_features="add"), 12, items, users
    )
    assert set(both.tables.items) == {"genre"} and set(both.tables.users) == {"age"}
    with pytest.raises(ValueError, match="model.item_features=True but ml has no item features"):
        models.build_model(models.ModelConfig(item_features=True), 12, dataset="ml")
    with pytest.raises(ValueError, match="model.user_features='add' but ml has no user features"):
        models.build_model(models.ModelConfig(user_features="add"), 12, dataset="ml")


def test_with_config_keeps_the_kind_and_the_tables():
    items = {"genre": np.zeros((12, 2), np.int32)}
    model = models.build_model(models.ModelConfig(item_features=True), 12, items)
    other = models.with_config(model, dataclasses.replace(model.config, attention_impl="xla"))
    assert type(other) is type(model) and other.tables is model.tables
    sasrec = models.build_model(models.ModelConfig(kind="sasrec"), 12)
    assert type(models.with_config(sasrec, sasrec.config)) is models.SASRec
