"""The config files load as the command lines load them, from any working directory."""

import os
import subprocess
import sys

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
