"""models/model_config.py: the model section's checks, each naming its field, and the kinds'
properties."""

import dataclasses
import re

import jax.numpy as jnp
import pytest

from bert4rec_jax import models


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"num_heads": 3}, "model.num_heads=3 must divide model.hidden_size=64"),
        ({"hidden_dropout": 1.0}, "model.hidden_dropout=1.0 must be in [0, 1)"),
        ({"attention_dropout": -0.1}, "model.attention_dropout=-0.1 must be in [0, 1)"),
        ({"attention_impl": "flash"}, "model.attention_impl='flash'"),
        ({"attention_impl": "cudnn"}, 'model.attention_impl="cudnn" needs model.dtype="bfloat16"'),
        ({"dtype": jnp.float16}, "model.dtype="),
        ({"user_features": "suffix"}, "model.user_features='suffix'"),
        ({"kind": "gpt"}, "model.kind='gpt'"),
        ({"last_block": "masked"}, "model.last_block='masked'"),
        ({"kind": "sasrec", "item_features": True}, "model.kind='sasrec' is the published model"),
        ({"kind": "sasrec", "user_features": "add"}, "model.kind='sasrec' is the published model"),
        ({"vocab_size": 2}, "vocab_size=2: need padding, [MASK] and an item"),
    ],
)
def test_a_bad_field_is_refused_naming_it(fields, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        models.ModelConfig(**fields)


def test_where_each_kind_is_scored():
    bert4rec = models.ModelConfig(vocab_size=12)
    sasrec = dataclasses.replace(bert4rec, kind="sasrec")
    assert not bert4rec.next_item and sasrec.next_item
    assert bert4rec.mask_id == sasrec.mask_id == 11
    assert set(models.MODEL_KINDS) == {"bert4rec", "sasrec"}
