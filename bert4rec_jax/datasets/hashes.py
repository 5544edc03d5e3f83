"""File hashes: the checksums of downloads and artifacts, and the key of a prepared file.

Streamed in 4 MiB chunks through `etils.epath`, so a file on any file system it reads (local or
gs://) is hashed without being loaded whole.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
from collections.abc import Sequence

from etils import epath

# Parts hashed at once: hashlib releases the GIL, and on gs:// the reads wait on the network.
_HASH_THREADS = 8


def _hash_file(path: epath.PathLike, digest, prefix: bytes = b"") -> str:
    digest.update(prefix)
    with epath.Path(path).open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_id(path: epath.PathLike) -> str:
    """The git blob id of a file: sha1 of b"blob <size>\\0" + content (what GitHub shows)."""
    size = epath.Path(path).stat().length
    return _hash_file(path, hashlib.sha1(), f"blob {size}\0".encode())


def sha256_file(path: epath.PathLike) -> str:
    """The sha256 of a file, as hex."""
    return _hash_file(path, hashlib.sha256())


def content_fingerprint(path: epath.PathLike) -> str:
    """A short key that changes whenever a file's content does: its size and content hash.

    The whole content is hashed (sha256; ~0.7 s per 500 MB on one core, streamed), not only its
    first and last blocks: an edit in the middle that keeps the size (one digit changed) must be
    noticed too. The modification time is deliberately left out: identical copies of a file (on
    each host of a multi-process job, or copied without preserving times) then share one
    prepared data set, and touching a file does not trigger a rebuild.

    Args:
      path: the file (local or any `etils.epath` file system).

    Returns:
      "<size>-<first 16 hex digits of the sha256 of the content>".
    """
    size = epath.Path(path).stat().length
    return f"{size}-{sha256_file(path)[:16]}"


def parts_fingerprint(parts: Sequence[tuple[str, epath.PathLike]]) -> str:
    """A short key that changes whenever a directory of part files changes: each part's name,
    size and content hash (`content_fingerprint`, several parts at a time).

    The names count because they define the parts' order (file order) and hold the hive
    partition values; the modification times do not, as for one file.

    Args:
      parts: (name below the directory, path) of every part, in file order.

    Returns:
      "<number of parts>-<total size>-<first 16 hex digits of the sha256 of the list>".
    """
    with concurrent.futures.ThreadPoolExecutor(min(_HASH_THREADS, max(len(parts), 1))) as pool:
        fingerprints = list(pool.map(content_fingerprint, [path for _, path in parts]))
    listing = [[name, f] for (name, _), f in zip(parts, fingerprints, strict=True)]
    digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
    size = sum(int(f.split("-", 1)[0]) for f in fingerprints)
    return f"{len(parts)}-{size}-{digest}"
