"""Stopping on SIGTERM or SIGINT, from the start of the command to its exit, always with exit 0.

Schedulers (preempted TPU and cloud VMs, SLURM's `scancel` and time limits, Kubernetes) send
SIGTERM with a grace period; Ctrl-C sends SIGINT. `train.py` calls `install()` first thing, before
JAX is imported, so that either signal only records a request, acted on at the next safe point:
before the loop, nothing trained (a rerun starts as if this start had not happened); in the loop,
after the step in progress, with a checkpoint; after the loop, once the last save finishes, before
the best parameters are restored and tested; during the test, once its results are written.
"""

from __future__ import annotations

import os
import signal
import threading
import types
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)
TEST_HOOK_ENV = "BERT4REC_SIGTERM_AT"

# The first signal received, by name; None while none has been.
_received: str | None = None
# Set once jax.distributed has started several processes: SIGTERM then belongs to JAX's service.
_coordinated = False
# Set once jax.distributed has started (even one process): its service may hold SIGTERM.
_service = False


def install() -> None:
    """Turns SIGTERM and SIGINT into a stop request for the rest of the process (main thread)."""
    # Python runs signal handlers in the main thread only, and installs them only from it.
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in SIGNALS:
        signal.signal(sig, _handle)


def ignore_from_now() -> None:
    """Ignores SIGTERM and SIGINT for the rest of the process: call once its work is done.

    At exit Python puts back the default action (death by the signal) of every signal it
    handles, while the libraries are still tearing down; a signal then would turn a finished run
    into a killed one. Ignored signals are left ignored.
    """
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def installed() -> bool:
    return signal.getsignal(signal.SIGINT) is _handle


class StopRequests:
    """The training loop's view of stop requests:

        with StopRequests() as stop:
            for step in ...:
                ...
                if stop.requested(step):
                    save and leave

    In a process that has not called `install()` (a library caller), the handlers are installed
    for the loop only and the previous ones put back after it.
    """

    def __init__(self):
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if installed() or threading.current_thread() is not threading.main_thread():
            return self
        for sig in SIGNALS:
            if sig == signal.SIGTERM and _coordinated:
                continue  # JAX's preemption service owns SIGTERM in a multi-process job
            self._previous[sig] = signal.signal(sig, _handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def signal_name(self) -> str | None:
        return _received

    @staticmethod
    def requested(step: int) -> bool:
        return requested(step)


def coordinate() -> None:
    """Hands stop requests to JAX's preemption service; call after jax.distributed.initialize.

    Several processes must agree on the step at which they all stop and save, or their
    collective saves would never meet. JAX's preemption service, started by
    `jax.distributed.initialize`, takes over SIGTERM in every process, tells the others, and
    `multihost_utils.reached_preemption_sync_point(step)` becomes true at one common step; SIGINT
    is passed on to it as SIGTERM. Outside the loop there is no common step to agree on, so a
    multi-process run stops only in the loop: before it, at the first step's sync point; after
    it, the run finishes.
    """
    global _coordinated, _service
    import jax

    _coordinated = jax.process_count() > 1
    # A jax.distributed job of one process (a one-host slice) may have its SIGTERM taken by the
    # service too (seen under the launcher's workers), so `requested` also asks the service.
    _service = jax.distributed.is_initialized()
    if _coordinated and _received:
        # A signal that came before the service started: pass it on, so that the loop stops.
        os.kill(os.getpid(), signal.SIGTERM)


def _handle(signum: int, frame: types.FrameType | None) -> None:
    del frame
    global _received
    _received = _received or signal.Signals(signum).name
    if _coordinated and signum != signal.SIGTERM:
        # Hand it to JAX's preemption service, which syncs the stop across processes.
        os.kill(os.getpid(), signal.SIGTERM)


def received() -> str | None:
    """The name of the signal that asked this process to stop, or None."""
    return _received


def stop_now() -> str | None:
    """Outside the loop: the signal to stop on now, or None (always None with several
    processes, which can only agree on a stop at a step)."""
    return None if _coordinated else _received


def requested(step: int) -> bool:
    """In the loop: whether to stop after `step` (the same answer in every process).

    Every process must call it at every step, with the same step numbers.
    """
    global _received
    if not _coordinated and _received is not None:
        return True  # one process: nobody else to agree with
    if _service:
        from jax.experimental import multihost_utils

        if multihost_utils.reached_preemption_sync_point(step):
            _received = _received or "SIGTERM"  # the signal went to JAX's service, not to us
            return True
    return False


def at(phase: str) -> None:
    """Marks a phase of the run: `startup`, `data`, `compile` (just before the first step
    compiles), `step_<n>`, `final_save` (the last step's checkpoint is being written),
    `best_restore`, `test_eval`.

    Test hook: with `BERT4REC_SIGTERM_AT=<phase>` the process sends itself SIGTERM when it
    reaches that phase, so that tests can stop a run at an exact point.
    """
    if os.environ.get(TEST_HOOK_ENV) == phase:
        os.kill(os.getpid(), signal.SIGTERM)
