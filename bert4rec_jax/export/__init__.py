"""Export: a trained run -> a self-contained directory that serves recommendations.

One module per job, as in `recommend/` (which reads what this writes):
  artifact.py  the directory's layout, manifest and checksums (no JAX, no TensorFlow)
  serving.py   the functions an artifact serves, serialised with jax.export and as a SavedModel
  writer.py    checkpoint -> artifact directory (`export_model`, `export_workdir`)
  __main__.py  the command line: python -m bert4rec_jax.export

`bert4rec_jax.export.export_model` and the other names below are loaded on first use, so that
`bert4rec_jax.export.artifact` stays free of JAX for readers.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the submodule that defines it.
_NAMES = {
    "DEFAULT_TOP_K": "writer",
    "KNOWN_PLATFORMS": "writer",
    "export_model": "writer",
    "export_workdir": "writer",
    "DEFAULT_PLATFORMS": "serving",
    "ENCODE_SIGNATURE": "serving",
    "EXCLUDE_SEEN": "serving",
    "HISTORY": "serving",
    "ITEM_IDS": "serving",
    "SCORES": "serving",
    "SIGNATURE": "serving",
    "USER_VECTORS": "serving",
    "USERS": "serving",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
