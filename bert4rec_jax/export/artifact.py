"""The layout of an exported model directory, its manifest and its checksums.

`export/writer.py` writes such a directory and `recommend` reads it; this module is what both
agree on. It imports neither JAX nor TensorFlow, so reading an artifact costs nothing of either.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from bert4rec_jax import scoring
from bert4rec_jax.datasets import corpus, hashes

FORMAT = "bert4rec_jax.export"
# Bumped whenever a reader of the previous format would misread the new one.
# 2: whole-history input of symbolic length, users input, encode.jax; 3: the raw ids stored by
# length (vocabulary.npz, users.npz) instead of as fixed-width arrays.
FORMAT_VERSION = 3

# Format, versions, creation time, shapes, top_k, and a sha256 per file.
MANIFEST = "manifest.json"
# The serving function, serialised with jax.export (parameters are its first input, not
# constants inside it).
SERVING_FN = "serving.jax"
# History -> user vector [hidden + 1], for nearest-neighbour retrieval.
ENCODE_FN = "encode.jax"
# Models with user features only: raw user ids by user row ([0] = the unknown user; stored as
# VOCABULARY is), and the feature rows by user row.
USERS = "users.npz"
USER_FEATURES = "user_features.npz"
# The other parameters the functions take (flattened names, "/"-separated).
PARAMS = "params.npz"
# Raw item ids by dense id: [0] stands for padding, [i] for item i. Integer ids as one int64
# array under RAW_IDS; string ids by length, as the corpus stores them (`write_raw_ids`), so one
# long id costs only its own bytes.
VOCABULARY = "vocabulary.npz"
RAW_IDS = "raw_ids"
# float32 [vocab_size, hidden]: row i embeds dense id i; the parameter item_embedding, kept once,
# in a file any tool reads. Item i scores h . embedding[i] + bias[i].
ITEM_EMBEDDINGS = "item_embeddings.npy"
OUTPUT_BIAS = "output_bias.npy"  # float32 [vocab_size]
CONFIG = "config.json"  # the training run's config
SAVED_MODEL_DIR = "saved_model"  # the same functions as a TensorFlow SavedModel (optional)
# The files every artifact has; the SavedModel's are listed in the manifest when it was written.
REQUIRED_FILES = (SERVING_FN, ENCODE_FN, PARAMS, VOCABULARY, ITEM_EMBEDDINGS, OUTPUT_BIAS, CONFIG)
# What the jax.export function's params argument is read from.
PARAMETER_FILES = (PARAMS, ITEM_EMBEDDINGS, OUTPUT_BIAS)


class ArtifactError(ValueError):
    """An export directory is missing, incomplete, damaged, or of an unknown format."""


def write_raw_ids(path: pathlib.Path, raw_ids: np.ndarray) -> None:
    """Writes raw ids (int64, or strings of any lengths) to an .npz file without pickle: integer
    ids under `RAW_IDS`, string ids as `RAW_IDS__offsets` (int64 [n + 1]) and `RAW_IDS__utf8`
    (uint8 [total bytes]): id i is utf8[offsets[i]:offsets[i + 1]]."""
    np.savez(path, **corpus.pack_raw_ids(corpus.raw_id_array(raw_ids), RAW_IDS))


def read_raw_ids(path: pathlib.Path) -> np.ndarray:
    """The raw ids `write_raw_ids` wrote: int64, or a unicode array for string ids (what the id
    map looks up in, vectorised)."""
    with np.load(path, allow_pickle=False) as saved:
        raw_ids = corpus.unpack_raw_ids(saved, RAW_IDS)
    return raw_ids if raw_ids.dtype.kind in "iu" else np.array(raw_ids.tolist(), dtype=str)


def file_entries(directory: pathlib.Path) -> dict[str, dict[str, Any]]:
    """{posix path relative to `directory`: {"sha256", "bytes"}} for every file but the manifest."""
    entries = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        if name != MANIFEST:
            entries[name] = {"sha256": hashes.sha256_file(path), "bytes": path.stat().st_size}
    return entries


def write_manifest(directory: pathlib.Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Adds the checksum of every file in `directory` to `manifest` and writes manifest.json.

    Returns:
      The manifest as written.
    """
    manifest = dict(manifest, files=file_entries(directory))
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_verified_manifest(directory: pathlib.Path) -> dict[str, Any]:
    """Reads an export directory's manifest and checks every file it lists against it.

    Args:
      directory: the export directory.

    Returns:
      The manifest.

    Raises:
      ArtifactError: naming the directory or the file: no manifest, another format, a file
        missing, or a file whose size or sha256 differs from the manifest's.
    """
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not a directory (expected an exported model)")
    if not path.exists():
        raise ArtifactError(
            f"{path} not found: {directory} is not an exported model "
            "(write one with python -m bert4rec_jax.export)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}): the artifact is damaged") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: format is not {FORMAT!r}; not an exported bert4rec model")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format_version {version!r}, but this bert4rec_jax reads version "
            f"{FORMAT_VERSION}; export the model again with this version"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{path} lists no files: the artifact is damaged")
    absent = [name for name in REQUIRED_FILES if name not in files]
    if absent:
        raise ArtifactError(f"{path} does not list {absent}: the artifact is damaged")
    for name, entry in sorted(files.items()):
        file = directory / name
        if not file.is_file():
            raise ArtifactError(f"{file} is missing: the artifact is incomplete (see {path})")
        size = file.stat().st_size
        if size != entry.get("bytes"):
            raise ArtifactError(
                f"{file} has {size} bytes, the manifest says {entry.get('bytes')}: the file was "
                "changed or damaged after export"
            )
        if hashes.sha256_file(file) != entry.get("sha256"):
            raise ArtifactError(
                f"{file} does not match its sha256 in {path}: the file was changed or damaged "
                "after export"
            )
    return manifest


def _fail(field: str, have: Any, want: Any, why: str) -> None:
    raise ArtifactError(
        f"{MANIFEST}: {field} is {have!r}, but {why} give {want!r}: the manifest was edited or "
        "the artifact is damaged; export the model again"
    )


def check_manifest(manifest: Mapping[str, Any]) -> None:
    """Checks the manifest's fields against each other (no file is read).

    The files are checked against their checksums by `read_verified_manifest`; the manifest is
    not covered by any checksum, so its own fields are checked here, and the loader checks them
    against what the files hold (`Recommender.load`).

    Raises:
      ArtifactError: naming the first field that disagrees.
    """
    try:
        model = manifest["model"]
        num_items = int(manifest["num_items"])
        top_k = int(manifest["top_k"])
        hidden = int(model["hidden_size"])
        serving = manifest["serving"]
        encode = manifest["encode"]
        shapes = manifest["shapes"]
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{MANIFEST}: field {e} is missing or malformed") from e
    if model.get("vocab_size") != num_items + 2:
        _fail("num_items", num_items, model.get("vocab_size", 0) - 2, "model.vocab_size - 2")
    if manifest.get("max_len") != model.get("max_len"):
        _fail("max_len", manifest.get("max_len"), model.get("max_len"), "model.max_len")
    # A left-to-right model (SASRec) appends no [MASK], so it reads one item more.
    append_mask = scoring.appends_mask(model.get("kind", "bert4rec"))
    history_length = scoring.history_length(model.get("max_len", 0), append_mask)
    if manifest.get("history_length") != history_length:
        _fail("history_length", manifest.get("history_length"), history_length,
              "model.max_len - 1" if append_mask else "model.max_len")  # fmt: skip
    if manifest.get("hidden_size") != hidden:
        _fail("hidden_size", manifest.get("hidden_size"), hidden, "model.hidden_size")
    if not 1 <= top_k <= num_items:
        _fail("top_k", top_k, f"1..{num_items}", "the num_items")
    for name in ("item_ids", "scores"):
        shape = serving.get("outputs", {}).get(name, {}).get("shape")
        if shape != ["b", top_k]:
            _fail(f"serving.outputs.{name}.shape", shape, ["b", top_k], "top_k")
    shape = encode.get("outputs", {}).get("user_vectors", {}).get("shape")
    if shape != ["b", hidden + 1]:
        _fail("encode.outputs.user_vectors.shape", shape, ["b", hidden + 1], "hidden_size + 1")
    for field, inputs in (("serving", serving), ("encode", encode)):
        shape = inputs.get("inputs", {}).get("history", {}).get("shape")
        if shape != ["b", "s"]:
            _fail(f"{field}.inputs.history.shape", shape, ["b", "s"], "format_version 2 and later")
    want = {
        "item_embedding": [num_items + 2, hidden],
        "output_bias": [num_items + 2],
        VOCABULARY: [num_items + 1],
    }
    if manifest.get("user_features"):
        want[USERS] = [int(manifest.get("num_users", 0)) + 1]
    for name, shape in want.items():
        if shapes.get(name) != shape:
            _fail(f"shapes[{name!r}]", shapes.get(name), shape, "num_items and hidden_size")


# Parameters stored as files of their own rather than in params.npz: {parameter: file}.
SEPARATE_PARAMS = {"item_embedding": ITEM_EMBEDDINGS, "output_bias": OUTPUT_BIAS}


def flatten_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """{"layers_0/attention/query/kernel": leaf, ...} from a nested dict (leaves unchanged)."""
    flat = {}

    def visit(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for key in sorted(node):
                visit(f"{prefix}/{key}" if prefix else str(key), node[key])
        else:
            flat[prefix] = node

    visit("", params)
    return flat


def unflatten_params(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The nested dict `flatten_params` came from."""
    params: dict[str, Any] = {}
    for name, value in flat.items():
        node = params
        *parents, leaf = name.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return params
