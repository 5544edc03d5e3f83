"""Tests for bert4rec_jax.workdir: the run directory, its files, opening a run, results stamped
with the config, which checkpoints a config may resume."""

import json

import pytest
from helpers import copy_workdir, heavy_imports, tiny_config

from bert4rec_jax import checkpointing
from bert4rec_jax import config as config_lib
from bert4rec_jax import workdir as workdir_lib


def test_open_run_reads_the_saved_config_with_the_data_paths_overridden(tmp_path):
    config = tiny_config(tmp_path, **{"eval.protocols": ("pop100", "full")})
    workdir_lib.save_config(tmp_path / "work", config)
    workdir, opened = workdir_lib.open_run(str(tmp_path / "work"), manual_dir="/offline")
    assert workdir.is_absolute() and workdir == tmp_path / "work"
    assert opened.data_dir == config.data_dir  # kept: not overridden
    assert opened.manual_dir == "/offline"
    assert opened.eval.protocols == ("pop100", "full")  # a tuple again, as in the config
    assert workdir_lib.config_hash(opened) == workdir_lib.config_hash(config)  # paths unhashed


def test_opening_a_folder_without_a_run_names_the_file_it_needs(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        workdir_lib.open_run(tmp_path)
    (tmp_path / workdir_lib.CONFIG_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        workdir_lib.open_run(tmp_path)


def test_results_are_stamped_and_read_back(tmp_path):
    config = tiny_config(tmp_path)
    assert workdir_lib.read_results(tmp_path) == {}
    workdir_lib.write_results(
        tmp_path, {"full/hr@10": 0.5}, params_step=3, checkpoint_step=6, config=config
    )
    assert json.loads((tmp_path / workdir_lib.RESULTS_FILE).read_text()) == {
        "step": 3,
        "full/hr@10": 0.5,
        "run": {"config_hash": workdir_lib.config_hash(config), "checkpoint_step": 6},
    }


def test_the_layout_imports_without_jax_or_tensorflow():
    # The data sets' cache writes with write_atomically: it must not pull the model's libraries.
    modules = ("bert4rec_jax.workdir", "bert4rec_jax.atomic", "bert4rec_jax.datasets.prepared")
    assert heavy_imports(*modules) == []


def test_check_compatible_names_each_changed_shape_field_and_allows_the_rest(tmp_path):
    from bert4rec_jax.config import RunConfig

    workdir = tmp_path / "work"
    (workdir / workdir_lib.CHECKPOINTS_DIR).mkdir(parents=True)
    saved = tiny_config(tmp_path)
    workdir_lib.save_config(workdir, saved)
    workdir_lib.check_compatible(workdir, RunConfig.from_config_dict(saved))
    # A training-time rate changes no parameter: a resumed run may change it.
    changed = tiny_config(tmp_path, **{"model.hidden_dropout": 0.5})
    workdir_lib.check_compatible(workdir, RunConfig.from_config_dict(changed))
    changed = tiny_config(tmp_path, **{"model.item_features": True, "synthetic.num_items": 70})
    with pytest.raises(workdir_lib.CheckpointError) as error:
        workdir_lib.check_compatible(workdir, RunConfig.from_config_dict(changed))
    assert "model.item_features=True (the checkpoints have False)" in str(error.value)
    assert "synthetic.num_items=70 (the checkpoints have " in str(error.value)


def test_results_are_stamped_with_the_config_and_the_checkpoint_step(tmp_path):
    config = tiny_config(tmp_path)
    workdir_lib.write_results(
        tmp_path, {"full/hr@10": 0.5}, params_step=10, checkpoint_step=20, config=config
    )
    moved = tiny_config(tmp_path / "elsewhere")  # the data directory is no part of the identity
    assert workdir_lib.read_results(tmp_path) == {
        "step": 10,
        "full/hr@10": 0.5,
        "run": {"config_hash": workdir_lib.config_hash(moved), "checkpoint_step": 20},
    }
    assert workdir_lib.config_hash(tiny_config(tmp_path, seed=1)) != workdir_lib.config_hash(config)


def test_a_config_json_older_than_a_model_field_resumes_with_its_default(
    tiny_stopped_run, tmp_path
):
    workdir = copy_workdir(tiny_stopped_run, tmp_path / "work")
    saved = json.loads((workdir / "config.json").read_text())
    del saved["model"]["item_features"], saved["model"]["user_features"]  # before side features
    (workdir / "config.json").write_text(json.dumps(saved))
    run = config_lib.RunConfig.from_config_dict(tiny_stopped_run.config)
    workdir_lib.check_compatible(workdir, run)  # both off: the same model
    with pytest.raises(checkpointing.CheckpointError, match="model.item_features=True"):
        config = tiny_stopped_run.config.copy_and_resolve_references()
        config.model.item_features = True
        workdir_lib.check_compatible(workdir, config_lib.RunConfig.from_config_dict(config))
