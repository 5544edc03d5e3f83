"""The run directory: its files, opening a run, atomic writes."""

import json
import subprocess
import sys

import pytest
from helpers import REPO, tiny_config

from bert4rec_jax import workdir as workdir_lib


def test_write_atomically_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "new" / "file.json"  # the folder is created
    workdir_lib.write_atomically(path, "first")
    workdir_lib.write_atomically(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["file.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "file.json"
    workdir_lib.write_atomically(path, "kept")
    with pytest.raises(TypeError):
        workdir_lib.write_atomically(path, 3)  # neither str nor bytes: fails mid-write
    assert path.read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["file.json"]


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
    code = (
        "import sys, bert4rec_jax.workdir, bert4rec_jax.datasets.prepared; "
        "print(sorted(m for m in ('jax', 'tensorflow', 'flax') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


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
