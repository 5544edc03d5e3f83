"""Whole-file writes: a reader sees the old file or the new one, never half of one.

Imports nothing of the project (and neither JAX nor TensorFlow), so every layer may use it: the
data sets' cache, the candidate cache and the run directory (`workdir.py`).
"""

from __future__ import annotations

import os
import uuid

from etils import epath


def write_atomically(path: epath.PathLike, data: bytes | str) -> None:
    """Writes a whole file or nothing: readers (other processes, other runs, a rerun after a
    crash) never see half of one. The temporary name is unique, so concurrent writers of the
    same file do not write into each other's; the last rename wins.
    """
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
    try:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
