"""Tests for bert4rec_jax.atomic: a whole file or nothing."""

import pytest

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
