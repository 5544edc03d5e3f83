"""Tests for bert4rec_jax.export.artifact: the manifest's checksums and fields, damage refused
naming the file or the field, raw ids stored by length."""

import json
import re
import shutil

import jax
import numpy as np
import pytest
from helpers import RANDOM_ITEMS, RANDOM_MAX_LEN

from bert4rec_jax import recommend
from bert4rec_jax.datasets import hashes
from bert4rec_jax.export import artifact


def test_manifest_lists_every_file_with_its_checksum(random_export):
    output, vocabulary, _ = random_export
    manifest = json.loads((output / artifact.MANIFEST).read_text())
    on_disk = {p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {artifact.MANIFEST}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == hashes.sha256_file(output / name)
    assert manifest["top_k"] == RANDOM_ITEMS and manifest["history_length"] == RANDOM_MAX_LEN - 1
    assert manifest["versions"]["jax"] == jax.__version__
    np.testing.assert_array_equal(artifact.read_raw_ids(output / artifact.VOCABULARY), vocabulary)
    # No temporary directory is left beside the export.
    assert [p.name for p in output.parent.iterdir()] == [output.name]


@pytest.mark.parametrize(
    "damage, name",
    [
        ("flip", artifact.SERVING_FN),
        ("flip", artifact.PARAMS),
        ("flip", artifact.VOCABULARY),
        ("delete", artifact.ITEM_EMBEDDINGS),
        ("delete", artifact.MANIFEST),
    ],
)
def test_damaged_artifact_is_refused_naming_the_file(random_export, tmp_path, damage, name):
    output, _, _ = random_export
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    target = copy / name
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    with pytest.raises(artifact.ArtifactError, match=re.escape(str(target))):
        recommend.Recommender.load(copy)


@pytest.mark.slow
@pytest.mark.parametrize(
    "field, edit",
    [
        ("top_k", lambda m: m.update(top_k=200)),
        ("top_k", lambda m: m.update(top_k=50)),
        ("serving.outputs.item_ids.shape",
         lambda m: m["serving"]["outputs"]["item_ids"].update(shape=["b", 99])),
        ("shapes['item_embedding']", lambda m: m["shapes"].update(item_embedding=[9, 9])),
        ("history_length", lambda m: m.update(history_length=7)),
    ],
)  # fmt: skip
def test_edited_manifest_is_refused_naming_the_field(served, tmp_path, field, edit):
    output = served.output
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    path = copy / artifact.MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    if field == "top_k" and manifest["top_k"] == 50:
        # A consistent edit of every top_k field: the function itself still returns 100.
        for name in ("item_ids", "scores"):
            manifest["serving"]["outputs"][name]["shape"] = ["b", 50]
    path.write_text(json.dumps(manifest))
    with pytest.raises(artifact.ArtifactError, match=re.escape(field)):
        recommend.Recommender.load(copy)


def test_raw_ids_are_stored_by_length_and_read_back(tmp_path):
    # One long id among short ones: a fixed-width array would give every entry its width.
    ids = np.array(["", "a", "bb", "x" * 10_000, "sku-\u00e9"], dtype=object)
    path = tmp_path / "ids.npz"
    artifact.write_raw_ids(path, ids)
    fixed_width = np.array(ids.tolist()).nbytes  # 5 entries x 10,000 UCS-4 characters
    assert path.stat().st_size < 10_000 + 2_000 < fixed_width
    back = artifact.read_raw_ids(path)
    assert back.dtype.kind == "U" and back.tolist() == ids.tolist()
    ints = np.array([-1, 7, 10**12], np.int64)
    artifact.write_raw_ids(path, ints)
    back = artifact.read_raw_ids(path)
    assert back.dtype == np.int64 and back.tolist() == ints.tolist()
