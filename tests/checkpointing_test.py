"""Tests for bert4rec_jax.checkpointing: damaged checkpoints skipped and kept, another model's
refused, results kept consistent with their lineage, restores across mesh shapes."""

import pathlib
import re

import pytest
from helpers import checkpointed_config, copy_workdir, snapshot, tiny_config

from bert4rec_jax import checkpointing, train_lib
from bert4rec_jax import workdir as workdir_lib


def test_a_rerun_checks_the_results_stamp_against_its_checkpoints_and_config(tmp_path, caplog):
    config = tiny_config(tmp_path)
    (tmp_path / "checkpoints" / "20").mkdir(parents=True)
    stamp = dict(params_step=10, checkpoint_step=20, config=config)
    workdir_lib.write_results(tmp_path, {"full/hr@10": 0.5}, **stamp)
    with caplog.at_level("INFO"):
        assert checkpointing.set_aside_stale(tmp_path, config) == []  # consistent
        other = tiny_config(tmp_path, learning_rate=0.5)
        assert checkpointing.set_aside_stale(tmp_path, other) == []
    assert "holds the results of config" in caplog.text  # kept, named, replaced at the end
    # Stamped past the latest checkpoint: not this lineage's.
    workdir_lib.write_results(tmp_path, {"full/hr@10": 0.5}, **dict(stamp, checkpoint_step=30))
    assert checkpointing.set_aside_stale(tmp_path, config) == [workdir_lib.RESULTS_FILE]
    [aside] = (tmp_path / workdir_lib.SET_ASIDE_DIR).iterdir()
    assert (aside / workdir_lib.RESULTS_FILE).exists()
    assert not (tmp_path / workdir_lib.RESULTS_FILE).exists()


# ---- bad checkpoints ----------------------------------------------------------------------


def damage(step_dir: pathlib.Path) -> None:
    """Truncates every file of a checkpoint's train state to half its size."""
    for path in (step_dir / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_damaged_latest_checkpoint_is_skipped_and_kept_aside(tiny_stopped_run, tmp_path, caplog):
    config = tiny_stopped_run.config  # config.json stays as it is
    workdir = copy_workdir(tiny_stopped_run, tmp_path / "work")  # stopped at 10, saved 5 and 10
    damage(workdir / "checkpoints" / "10")
    with caplog.at_level("INFO"):
        assert train_lib.train_and_evaluate(config, str(workdir))  # finishes, with test results
    [skipped] = [r.getMessage() for r in caplog.records if "Skipping" in r.getMessage()]
    # One short line: the step, the directory and the cause (not TensorStore's spec).
    assert re.fullmatch(
        r"Skipping unusable checkpoint of step 10 \(.*checkpoints/10\): \w+: .+", skipped
    )
    assert len(skipped) < 600 and "tensorstore_spec" not in skipped, skipped
    print(skipped)
    assert "Resuming from checkpoint at step 5" in caplog.text
    # The damaged files are kept, out of the way; training saved step 10 again.
    [kept] = (workdir / workdir_lib.UNUSABLE_DIR).iterdir()
    assert kept.name.startswith("10-")
    assert checkpointing.Checkpointer(workdir, keep=3).latest_step() == config.num_train_steps


def test_no_usable_checkpoint_is_an_error_that_changes_nothing(tiny_stopped_run, tmp_path):
    config = tiny_stopped_run.config  # config.json stays as it is
    workdir = copy_workdir(tiny_stopped_run, tmp_path / "work")  # stopped at 10, saved 5 and 10
    for step in (5, 10):
        damage(workdir / "checkpoints" / str(step))
    before = snapshot(workdir)
    with pytest.raises(checkpointing.CheckpointError, match=r"no usable checkpoint.*checkpoints"):
        train_lib.train_and_evaluate(config, str(workdir))
    assert snapshot(workdir) == before


@pytest.mark.parametrize(
    "field, value",
    [
        ("model.hidden_size", 32),
        ("model.max_len", 24),
        ("synthetic.num_items", 70),
        # Switches that add parameters: without a check, resuming failed as "no usable checkpoint".
        ("model.item_features", True),
        ("model.user_features", "prefix"),
    ],
)
def test_checkpoints_of_another_model_are_refused_before_any_step(
    tiny_stopped_run, tmp_path, field, value
):
    workdir = copy_workdir(tiny_stopped_run, tmp_path / "work")
    before = snapshot(workdir)
    with pytest.raises(checkpointing.CheckpointError, match=re.escape(f"{field}={value!r}")):
        train_lib.train_and_evaluate(checkpointed_config(tmp_path, **{field: value}), str(workdir))
    assert snapshot(workdir) == before
