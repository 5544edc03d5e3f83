"""Where a run's metrics go: TensorBoard event files, a JSON-lines file, and the console.

Only process 0 writes; every other process gets a writer that does nothing, so callers need no
`if process_index == 0` of their own.
"""

from __future__ import annotations

import json
import logging as std_logging
import math
import os
import socket
import struct
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
        self._tb = EventFileWriter(workdir / workdir_lib.TENSORBOARD_DIR)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self._active:
            return
        # Wall-clock time too, so curves of quality against time can be drawn from the file.
        row = {"step": int(step), "time": round(time.time(), 3)}
        row.update({k: _json_number(v) for k, v in metrics.items()})
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        self._tb.write_scalars(int(step), {k: float(v) for k, v in metrics.items()})

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


# ---- TensorBoard event files, written without TensorFlow --------------------------------------
# TensorFlow takes ~5 s of CPU to import; a run that needs it for nothing else (the "device" input
# pipeline, a corpus prepared beforehand) should not pay that for its scalars, and a machine
# without TensorFlow still gets event files. The format is small and stable: a file of TFRecords,
# each an `Event` protocol buffer (tensorflow/core/util/event.proto), encoded here by hand.
# TensorBoard reads any file whose name contains "tfevents"; the name below is TensorFlow's.


class EventFileWriter:
    """Appends scalar summaries to a new `events.out.tfevents.*` file in `directory`."""

    _count = 0  # writers opened by this process

    def __init__(self, directory: epath.PathLike):
        directory = epath.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # A new file per writer, as tf.summary does: a resumed run adds one beside the old ones
        # (TensorBoard merges the files of a directory by step). pid and a counter keep two
        # writers of one second apart.
        EventFileWriter._count += 1
        name = (
            f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
            f".{os.getpid()}.{EventFileWriter._count}.v2"
        )
        self.path = directory / name
        self._file = self.path.open("wb")  # closed in close()
        # The first event names the format version, as TensorFlow's writer does.
        self._write_event(_event(time.time(), 0, file_version="brain.Event:2"))

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """One event at `step` holding every scalar (TensorBoard plots each tag as a curve)."""
        values = b"".join(
            _field(1, _field(1, tag.encode()) + _float_field(2, value))
            for tag, value in scalars.items()
        )
        self._write_event(_event(time.time(), step, summary=values))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write_event(self, event: bytes) -> None:
        # TFRecord framing: length, its masked CRC-32C, the data, its masked CRC-32C.
        length = struct.pack("<Q", len(event))
        self._file.write(length + _masked_crc(length) + event + _masked_crc(event))
        self._file.flush()  # TensorBoard shows a running job's curves as they come


def _event(
    wall_time: float, step: int, *, file_version: str = "", summary: bytes | None = None
) -> bytes:
    """An `Event`: wall_time = 1 (double), step = 2 (int64), file_version = 3, summary = 5."""
    out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(step)
    if file_version:
        out += _field(3, file_version.encode())
    if summary is not None:
        out += _field(5, summary)  # a `Summary`: its repeated Value (tag = 1, simple_value = 2)
    return out


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # a negative int64 is its two's complement, ten bytes long
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited field (wire type 2): bytes, a string or a nested message."""
    return _key(number, 2) + _varint(len(data)) + data


def _float_field(number: int, value: float) -> bytes:
    """A `float` field (wire type 5): simple_value is single precision, as TensorBoard shows it."""
    return _key(number, 5) + struct.pack("<f", value)


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = crc >> 1 ^ (0x82F63B78 if crc & 1 else 0)  # Castagnoli's polynomial, reflected
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C of `data`, which TFRecords use (not zlib's CRC-32)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ crc >> 8
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> bytes:
    # TFRecord's mask: rotated right by 15 bits, plus a constant (a CRC of data holding CRCs is
    # otherwise weak).
    crc = crc32c(data)
    return struct.pack("<I", ((crc >> 15 | crc << 17) + 0xA282EAD8) & 0xFFFFFFFF)


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
