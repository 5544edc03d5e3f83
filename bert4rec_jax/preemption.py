"""Stopping on SIGTERM or SIGINT: the loop finishes its step, saves a checkpoint and exits 0.

Schedulers (TPU and cloud VMs being preempted, SLURM's `scancel` and time limits, Kubernetes)
send SIGTERM and give the job a grace period; Ctrl-C sends SIGINT. Either one asks the training
loop to stop after the step it is in, with a checkpoint, so that rerunning the same command
resumes exactly there.

With one process a Python signal handler sets a flag the loop reads after every step. With
several, the processes must agree on the step at which they all stop and save, or their
collective saves would never meet. JAX's own preemption service does that: started by
`jax.distributed.initialize`, it catches SIGTERM in every process, tells the others, and
`multihost_utils.reached_preemption_sync_point(step)` becomes true at one common step. SIGINT is
turned into the SIGTERM that service listens to.
"""

from __future__ import annotations

import os
import signal
import threading
import types
from typing import Any

import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    """A context manager that turns SIGTERM and SIGINT into a request to stop after a step.

        with StopRequests() as stop:
            for step in ...:
                ...
                if stop.requested(step):
                    save and leave

    Every process must call `requested` at every step, with the same step numbers.
    """

    def __init__(self):
        self.signal_name: str | None = None  # the signal that asked, once one did
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        # Python runs signal handlers in the main thread only, and installs them only from it.
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in SIGNALS:
            if sig == signal.SIGTERM and self._coordinated():
                continue  # JAX's preemption service owns SIGTERM in a multi-process job
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @staticmethod
    def _coordinated() -> bool:
        return jax.process_count() > 1

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        del frame
        self.signal_name = signal.Signals(signum).name
        if self._coordinated():
            # Hand it to JAX's preemption service, which syncs the stop across processes.
            os.kill(os.getpid(), signal.SIGTERM)

    def requested(self, step: int) -> bool:
        """Whether to stop after `step` (the same answer in every process)."""
        if self._coordinated():
            if multihost_utils.reached_preemption_sync_point(step):
                self.signal_name = self.signal_name or "SIGTERM"
                return True
            return False
        return self.signal_name is not None
