"""Tests for the bert4rec_jax.export package and its command line (`python -m
bert4rec_jax.export`, export/__main__.py)."""

import pytest
from helpers import heavy_imports, run_cli

from bert4rec_jax.export import artifact


def test_the_command_line_says_what_it_exported(tiny_export):
    lines = tiny_export.printed.splitlines()
    assert lines[0].startswith(f"Exported synthetic step {tiny_export.step} (best): ")
    assert "top_k=20" in lines[0] and "platforms cpu,cuda,tpu" in lines[0]
    assert lines[1].startswith(f"Wrote {tiny_export.output} (")
    assert (tiny_export.output / artifact.SAVED_MODEL_DIR).is_dir()  # the default: written


def test_a_missing_flag_is_named_with_exit_status_2(tmp_path):
    failed = run_cli("bert4rec_jax.export", f"--output={tmp_path / 'out'}", check=False)
    assert failed.returncode == 2
    assert "--workdir" in failed.stderr and not (tmp_path / "out").exists()


def test_names_load_on_first_use_and_the_layout_stays_free_of_jax():
    # recommend reads the layout (export.artifact): importing it must not pull the writer in.
    assert heavy_imports("bert4rec_jax.export.artifact") == []
    from bert4rec_jax import export
    from bert4rec_jax.export import serving, writer

    assert export.export_model is writer.export_model
    assert export.SIGNATURE == serving.SIGNATURE
    with pytest.raises(AttributeError, match="no attribute 'export_modle'"):
        export.export_modle  # noqa: B018
