"""Stop requests: SIGTERM/SIGINT (cluster preemption, Ctrl-C) ask the loop to stop cleanly.

While a run is inside `handlers()`, a signal only sets a flag; the loop finishes the current step,
saves a checkpoint (with the data position) and returns {"status": "preempted"}; the same command
resumes. A second Ctrl-C aborts at once (KeyboardInterrupt; checkpoints already written stay
valid). In a multi-process run every process must stop at the same step, so the request is agreed
on with a cross-process reduction: a signal to any one process stops them all.
"""

import contextlib
import signal
import threading
from collections.abc import Iterator

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# main.py's exit status after a stop on request (checkpoint saved; rerun to resume), so that a
# launcher can requeue: EX_TEMPFAIL of sysexits.h. Finished runs exit 0.
EXIT_PREEMPTED = 75
_requested = threading.Event()


def request_stop(signum: int | None = None, frame=None) -> None:
  """Asks the running loop to save and stop (also callable directly, e.g. from a hook)."""
  del frame
  if _requested.is_set():
    if signum == signal.SIGINT:
      raise KeyboardInterrupt("second interrupt: stopping without a final checkpoint")
    return
  name = signal.Signals(signum).name if signum else "stop request"
  logging.warning("%s: finishing the current step and saving a checkpoint", name)
  _requested.set()


@contextlib.contextmanager
def handlers() -> Iterator[None]:
  """SIGTERM and SIGINT request a clean stop inside the block; the previous handlers (e.g. Ctrl-C
  raising KeyboardInterrupt) are back after it. Clears an earlier run's request on entry."""
  _requested.clear()
  if threading.current_thread() is not threading.main_thread():  # signals reach the main thread
    yield
    return
  previous = {s: signal.getsignal(s) for s in SIGNALS}
  for s in SIGNALS:
    signal.signal(s, request_stop)
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, signal.SIG_DFL if handler is None else handler)


def stop_requested() -> bool:
  """Whether any process was asked to stop (a collective: every process calls it each step)."""
  local = _requested.is_set()
  if jax.process_count() == 1:
    return local
  return bool(np.max(multihost_utils.process_allgather(np.array(local))))
