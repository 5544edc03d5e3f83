"""A progress line on stderr for long jobs: redrawn on a terminal, plain lines in a log.

Shared by the jobs that read or serve data at scale (`recommend.job`, `datasets.interactions`),
so that they all look alike. Imports nothing of the project.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def clock(seconds: float) -> str:
    """Seconds as H:MM:SS."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressLine:
    """Shows `done` of `total` units with a bar and an ETA, at most every 0.5 s on a terminal
    (one redrawn line) and every `log_every_s` otherwise (a log gets no carriage returns or
    escape codes).

    Attributes:
      total: the units to do, or None when unknown (no bar, no ETA).
      unit: what is counted ("rows").
      stream: where the line goes (stderr by default).
      label: what the job is, at the start of every line ("" = nothing).
      delay_first: wait the interval before the first line too, so that a quick job shows none.
      start: when the job started (`time.monotonic`).
      shown: whether a line has been written.
    """

    def __init__(
        self,
        total: int | None,
        unit: str,
        stream: TextIO | None = None,
        log_every_s: float = 10.0,
        label: str = "",
        delay_first: bool = False,
    ):
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.log_every_s = log_every_s
        self.label = f"{label}: " if label else ""
        self.start = time.monotonic()
        self.shown = False
        self._last = self.start if delay_first else 0.0

    @property
    def elapsed(self) -> float:
        return max(time.monotonic() - self.start, 1e-9)

    def due(self, done: int, final: bool = False) -> bool:
        """Whether `update(done, ..., final)` would write a line now."""
        if final:
            return True
        if time.monotonic() - self._last < (0.5 if self.tty else self.log_every_s):
            return False
        # In a log, the final line follows at once: it gets the finished count only once.
        return self.tty or not (self.total and done >= self.total)

    def update(self, done: int, detail: str, final: bool = False) -> None:
        """Shows `done` units and `detail` (counts of the job's own, e.g. "20 users, 5/s")."""
        if not self.due(done, final):
            return
        self._last = time.monotonic()
        elapsed = self.elapsed
        if self.total:
            fraction = min(done / self.total, 1.0)
            eta = elapsed * (1 - fraction) / fraction if fraction > 0 else float("nan")
            bar = "#" * int(30 * fraction)
            eta_text = "" if final or eta != eta else f" ETA {clock(eta)}"
            text = (
                f"[{bar:<30}] {fraction:4.0%} {done:,}/{self.total:,} {self.unit}, {detail}, "
                f"{clock(elapsed)}{eta_text}"
            )
        else:
            text = f"{done:,} {self.unit}, {detail}, {clock(elapsed)}"
        text = self.label + text
        self.stream.write(("\r" + text + ("\n" if final else "")) if self.tty else text + "\n")
        self.stream.flush()
        self.shown = True
