"""Tests for bert4rec_jax.datasets.hashes: git blob ids and sha256 of files."""

from helpers import write_file

from bert4rec_jax.datasets import hashes


def test_checksums(tmp_path):
    path = write_file(tmp_path, "x", b"hello\n")
    # `git hash-object` of "hello\n" and `sha256sum`.
    assert hashes.git_blob_id(path) == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert (
        hashes.sha256_file(path)
        == "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    )
