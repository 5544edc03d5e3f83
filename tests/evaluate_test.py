"""Tests for `python -m bert4rec_jax.evaluate` (evaluate.py): a workdir evaluated again, on another
device count, with any protocol."""

import json
import re

import numpy as np
import pytest
from helpers import copy_workdir, run_cli

from bert4rec_jax import workdir as workdir_lib

# ---- evaluating a workdir, and early stopping across restarts -------------------------------


@pytest.mark.slow
def test_workdir_trained_on_8_devices_evaluates_on_1_with_any_protocol(tiny_finished_run, tmp_path):
    # Trained in the test process on the 8 test devices; `evaluate` runs on 1 device, whose count
    # the training batch need not suit (24 is a multiple of 8, not of 16), and is asked for full
    # ranking alone.
    assert tiny_finished_run.config.batch_size == 24
    workdir = copy_workdir(tiny_finished_run, tmp_path / "work")  # evaluate writes into it
    trained = tiny_finished_run.results
    printed = run_cli(
        "bert4rec_jax.evaluate", f"--workdir={workdir}", "--split=test", "--protocol=full"
    ).stdout
    assert re.search(r"^full\s+\d\.\d{4}", printed, re.MULTILINE), printed
    assert "pop100" not in printed
    run_cli("bert4rec_jax.evaluate", f"--workdir={workdir}", "--protocol=pop100,full")
    evaluated = json.loads((workdir / "eval_bert4rec_test.json").read_text())
    recorded = json.loads((workdir / workdir_lib.RESULTS_FILE).read_text())
    assert evaluated["step"] == recorded["step"]
    for key, value in trained.items():
        np.testing.assert_allclose(evaluated[key], value, rtol=0, atol=1e-6, err_msg=key)
