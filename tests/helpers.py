"""Helpers shared by test files (imported as `helpers`; pytest puts tests/ on the path)."""

import ml_collections

from configs import tiny


def tiny_config(tmp_path, **overrides) -> ml_collections.ConfigDict:
    """configs/tiny.py with its data under tmp_path; overrides name fields with dots."""
    config = tiny.get_config()
    config.data_dir = str(tmp_path / "data")
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config
