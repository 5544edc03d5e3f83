"""config.RunConfig: one parse of the ConfigDict, its fallbacks for older config.json files, and
the cross-section checks training runs once."""

import dataclasses
import json
import re

import jax.numpy as jnp
import pytest
from helpers import set_field

from bert4rec_jax import cloze, evaluation, losses, models, sharding
from bert4rec_jax import config as config_lib
from bert4rec_jax import workdir as workdir_lib
from bert4rec_jax.config import MeshConfig, RunConfig
from configs import default as default_config


def saved_without(tmp_path, *dotted: str):
    """The default config written as a run's config.json without the fields `dotted` (as a run
    older than them wrote it), read back as every command reads it."""
    data = json.loads(default_config.get_config().to_json_best_effort())
    for name in dotted:
        *parents, leaf = name.split(".")
        node = data
        for p in parents:
            node = node[p]
        del node[leaf]
    (tmp_path / workdir_lib.CONFIG_FILE).write_text(json.dumps(data))
    return workdir_lib.load_config(tmp_path)


def default_with(dotted: str, value):
    """configs/default.py with one field (named with dots) set to `value`."""
    config = default_config.get_config()
    set_field(config, dotted, value)
    return config


# Each field a config.json may lack, and what the runs that wrote such files had.
FALLBACKS = [
    ("model.item_features", lambda r: r.model.item_features, False),
    ("model.user_features", lambda r: r.model.user_features, ""),
    ("model.kind", lambda r: r.model.kind, "bert4rec"),
    ("input.buckets", lambda r: (r.input.buckets, r.eval.buckets), ((), ())),
    ("input.mask_last_weight", lambda r: r.input.mask_last_weight, 1.0),
    ("input.mask_last_share", lambda r: r.input.mask_last_share, 0.0),
    ("input.pipeline", lambda r: r.input.pipeline, "tf.data"),
    ("loss.gbce_shift", lambda r: r.loss.gbce_shift, False),
    ("loss", lambda r: r.loss, losses.LossConfig()),
    ("mesh", lambda r: r.mesh, MeshConfig(data=0, model=1)),
    ("file", lambda r: r.data.file, None),
]


@pytest.mark.parametrize("field, read, old_value", FALLBACKS, ids=[f[0] for f in FALLBACKS])
def test_an_older_config_json_loads_with_the_value_its_run_had(tmp_path, field, read, old_value):
    run = RunConfig.from_config_dict(saved_without(tmp_path, field))
    assert read(run) == old_value


def test_sections_of_the_default_config():
    config = default_config.get_config()
    run = RunConfig.from_config_dict(config)
    # The model section waits for the data set's vocabulary; build_model sets it.
    assert run.model.vocab_size is None
    assert run.model.dtype == jnp.float32 and run.model.attention_impl is None
    assert models.build_model(run.model, 502).config.mask_id == 501
    # The input and eval sections take the model's length; sasrec's input predicts everywhere.
    assert run.input.max_len == run.eval.max_len == config.model.max_len
    assert run.input.max_predictions == config.input.max_predictions
    config.model.kind = "sasrec"
    assert RunConfig.from_config_dict(config).input.max_predictions == config.model.max_len
    # The training loop's eval.* fields are the train section's; the ConfigDict keys stay.
    assert run.train.eval_every_steps == config.eval.every_steps
    assert run.train.metric == config.eval.metric
    assert run.validates
    paper = dataclasses.replace(run.data, split_mode="paper")  # no validation item
    assert not dataclasses.replace(run, data=paper).validates
    assert not any(f.name == "every_steps" for f in dataclasses.fields(evaluation.EvalConfig))


def test_each_section_is_parsed_here_only():
    # The per-section readers of a raw ConfigDict are gone: RunConfig.from_config_dict is the one.
    for section in (
        models.ModelConfig,
        cloze.InputConfig,
        losses.LossConfig,
        evaluation.EvalConfig,
    ):
        assert not hasattr(section, "from_config"), section
    assert not hasattr(sharding, "mesh_from_config")


@pytest.mark.parametrize(
    "field, value",
    [
        ("dataset", "no-such-data"),
        ("split_mode", "random"),
        ("model.dtype", "float16"),
        ("model.num_heads", 3),
        ("input.mask_prob", 0.0),
        ("loss.type", "softmax"),
        ("eval.protocols", ("pop50",)),
        ("eval.every_steps", -1),
        ("eval.num_valid_users", -1),
        ("eval.early_stopping_patience", -1),
        ("num_train_steps", 0),
        ("warmup_steps", 1500),
        ("learning_rate", 0.0),
    ],
)
def test_a_bad_field_fails_the_parse_naming_it(field, value):
    config = default_with(field, value)
    with pytest.raises(ValueError, match=re.escape(f"{field}=")):
        RunConfig.from_config_dict(config)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("batch_size", 12, "batch_size=12 must be a positive multiple of the 8 devices"),
        ("eval.batch_size", 500, "eval.batch_size=500 must be a positive multiple of the 8"),
        (
            "eval.metric",
            "full/ndcg@50",
            "eval.metric='full/ndcg@50': must be '<protocol>/<metric>'",
        ),
        ("eval.metric", "uniform100/hr@10", "a protocol in eval.protocols=('pop100', 'full')"),
    ],
)
def test_cross_section_checks_name_the_field(field, value, message):
    config = default_with(field, value)
    # Evaluation parses any of these (it fits its batch to its devices, takes any protocol) ...
    run = RunConfig.from_config_dict(config)
    # ... training refuses them, naming the field.
    with pytest.raises(ValueError, match=re.escape(message)):
        run.check(sharding.make_mesh())


def test_the_metric_is_checked_only_when_training_validates():
    config = default_config.get_config()
    config.eval.metric = "full/ndcg@50"
    config.split_mode = "paper"  # nothing to validate on: the metric is never read
    RunConfig.from_config_dict(config).check(sharding.make_mesh())
    config.split_mode, config.eval.every_steps = "standard", 0
    RunConfig.from_config_dict(config).check(sharding.make_mesh())


def test_every_model_field_is_compared_on_resume_unless_listed_with_a_reason():
    from configs import default

    model_fields = {f.name for f in dataclasses.fields(models.ModelConfig)}
    # The exclusions name real fields (a renamed field would otherwise become compared silently).
    assert set(config_lib.NOT_SHAPE_MODEL_FIELDS) <= model_fields
    # Every switch of the config's model group is either compared or excused with a reason.
    for name in default.get_config().model:
        assert (
            f"model.{name}" in config_lib.SHAPE_FIELDS or name in config_lib.NOT_SHAPE_MODEL_FIELDS
        ), f"model.{name}: add it to ModelConfig or to NOT_SHAPE_MODEL_FIELDS with a reason"
    assert {"model.item_features", "model.user_features"} <= set(config_lib.SHAPE_FIELDS)
