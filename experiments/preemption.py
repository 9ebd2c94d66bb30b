"""Stop requests: SIGTERM/SIGINT (cluster preemption, Ctrl-C) ask the loop to stop cleanly.

The loop finishes the current step, saves a checkpoint (with the data position) and returns; the
same command resumes. In a multi-process run every process must stop at the same step, so the
request is agreed on with a cross-process reduction.
"""

import signal
import threading

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

_requested = threading.Event()


def request_stop(*_) -> None:
  if not _requested.is_set():
    logging.warning("stop requested: finishing the current step and saving a checkpoint")
  _requested.set()


def install_handlers() -> None:
  """SIGTERM and SIGINT request a clean stop (only from the main thread)."""
  _requested.clear()
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def stop_requested() -> bool:
  local = _requested.is_set()
  if jax.process_count() == 1:
    return local
  return bool(np.max(multihost_utils.process_allgather(np.array(local))))
