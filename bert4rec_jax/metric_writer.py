"""Where a run's metrics go: TensorBoard event files, a JSON-lines file, and the console.

Only process 0 writes; every other process gets a writer that does nothing, so callers need no
`if process_index == 0` of their own.
"""

from __future__ import annotations

import json
import logging as std_logging
import math
import time
from collections.abc import Mapping

import jax
from absl import logging
from etils import epath

from bert4rec_jax import workdir as workdir_lib


class MetricWriter:
    """Writes scalar metrics by step to `<workdir>/metrics.jsonl` and `<workdir>/tensorboard`."""

    def __init__(self, workdir: epath.PathLike, *, start_step: int = 0):
        """Opens the writers.

        Args:
          workdir: the run's workdir.
          start_step: the step the run resumes from. Rows of later steps already in
            metrics.jsonl were written after the checkpoint the run resumes from (by a run that
            was then killed): they are dropped, so that each step is logged once.
        """
        self._active = jax.process_index() == 0
        self._tb = None
        self._jsonl = None
        if not self._active:
            return
        workdir = epath.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / workdir_lib.METRICS_FILE
        # Cloud storage has no append: a resumed run rewrites what the file held, then goes on.
        previous = path.read_text().splitlines(keepends=True) if path.exists() else []
        kept = [
            line for line in previous if line.strip() and json.loads(line)["step"] <= start_step
        ]
        self._jsonl = path.open("w")  # closed in close()
        self._jsonl.writelines(kept)
        try:
            # TensorFlow is already a dependency of the input pipeline; tf.summary writes the
            # event files TensorBoard reads.
            import tensorflow as tf

            self._tb = tf.summary.create_file_writer(str(workdir / workdir_lib.TENSORBOARD_DIR))
        except ImportError:
            logging.warning("tensorflow is not installed: no TensorBoard event files")

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self._active:
            return
        # Wall-clock time too, so curves of quality against time can be drawn from the file.
        row = {"step": int(step), "time": round(time.time(), 3)}
        row.update({k: _json_number(v) for k, v in metrics.items()})
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            import tensorflow as tf

            with self._tb.as_default(step=int(step)):
                for k, v in metrics.items():
                    tf.summary.scalar(k, float(v))
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _json_number(v: float) -> float | str:
    v = float(v)
    return v if math.isfinite(v) else str(v)  # JSON has no NaN/Inf; keep them readable


def quiet_library_logs() -> None:
    """Keeps the console readable: Orbax logs every save at INFO; only its warnings are shown.
    TFDS warns of a "custom data configuration" and a folder without dataset_info.json whenever
    a data set is prepared, which this package does on purpose and logs itself; only its errors
    are shown. JAX tells at INFO that it found no TPU ("Unable to initialize backend 'tpu'") on
    every machine without one, which is expected, not news."""

    def keep(record: std_logging.LogRecord) -> bool:
        if "/tensorflow_datasets/" in record.pathname:
            return record.levelno >= std_logging.ERROR
        if record.levelno >= std_logging.WARNING:
            return True
        if "/orbax/" in record.pathname:
            return False
        return not (
            record.pathname.endswith("xla_bridge.py")
            and str(record.msg).startswith("Unable to initialize backend")
        )

    logging.get_absl_handler().addFilter(keep)
