"""The config files load as the command lines load them, from any working directory."""

import dataclasses
import os
import subprocess
import sys

import ml_collections
import pytest
from helpers import REPO

# A child that loads each config file given on its command line through ml_collections'
# config flag, as `--config=<path>` does for every command line, and prints its data set.
LOAD = """
import sys
from absl import flags
from ml_collections import config_flags

for path in sys.argv[1:]:
    values = flags.FlagValues()
    config = config_flags.DEFINE_config_file("config", flag_values=values)
    values(["load", f"--config={path}"])
    print(path.rsplit("/", 1)[-1], config.value.dataset)
"""


def test_every_config_loads_from_another_working_directory(tmp_path):
    files = (REPO / "configs").glob("*.py")
    paths = sorted(str(p) for p in files if "def get_config" in p.read_text())
    # Neither the checkout's root as the working directory nor on PYTHONPATH: only the files.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", LOAD, *paths], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = dict(line.split() for line in out.stdout.splitlines())
    assert set(loaded) == {os.path.basename(p) for p in paths}
    assert loaded["tiny.py"] == "synthetic" and loaded["beauty_cpu.py"] == "beauty"


# ---- Defaults in one place ------------------------------------------------------------------
# Each section's dataclass (what code that builds one by hand gets) and configs/default.py
# (what every command line gets, each field commented) must agree on every default. Compared
# through the one parse (config.RunConfig), which maps the config's spellings ("float32", "")
# onto the dataclasses' (jnp.float32, None).


def _defaults(cls) -> dict:
    """{field: default} of the dataclass fields that have one."""
    out = {}
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            out[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            out[field.name] = field.default_factory()
    return out


def _disagreements(cls, parsed, names=None) -> list[str]:
    """The defaults of `cls` (those in `names`, default all) that `parsed` does not hold."""
    defaults = _defaults(cls)
    return [
        f"{cls.__name__}.{name} = {defaults[name]!r}, configs/default.py gives "
        f"{getattr(parsed, name)!r}"
        for name in (defaults if names is None else names)
        if getattr(parsed, name) != defaults[name]
    ]


def _parsed_default():
    from bert4rec_jax.config import RunConfig
    from configs import default

    return RunConfig.from_config_dict(default.get_config())


@pytest.mark.parametrize("section", ["input", "loss", "eval", "mesh", "model"])
def test_a_sections_dataclass_defaults_are_the_default_configs(section):
    parsed = getattr(_parsed_default(), section)
    assert not _disagreements(type(parsed), parsed)


def test_the_data_groups_defaults_are_the_default_configs():
    from bert4rec_jax.datasets import file_options, synthetic
    from configs import default

    config = default.get_config()
    # Every option of your own file is in the default config (its path has no default).
    options = {f.name for f in dataclasses.fields(file_options.FileOptions)}
    assert options == set(config.file)
    assert not _disagreements(file_options.FileOptions, config.file, sorted(options - {"path"}))
    size = ("num_users", "num_items", "seed")  # the builder config's own fields
    assert not _disagreements(synthetic.SyntheticConfig, config.synthetic, size)
    # And the comparison sees a difference where there is one.
    smaller = ml_collections.ConfigDict({"num_users": 1, "num_items": 500, "seed": 0})
    [difference] = _disagreements(synthetic.SyntheticConfig, smaller, size)
    assert difference.startswith("SyntheticConfig.num_users = 2000")
