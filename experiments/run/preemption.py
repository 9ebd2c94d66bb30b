"""Stop requests: SIGTERM/SIGINT (cluster preemption, Ctrl-C) ask the loop to stop cleanly.

While a run is inside `handlers()`, a signal only sets a flag; the loop finishes the current step,
saves a checkpoint (with the data position) and returns {"status": "preempted"}; the same command
resumes. In a multi-process run every process must stop at the same step, so the request is agreed
on with a cross-process reduction: a signal to any one process stops them all.

A second Ctrl-C exits at once with status 130, from a watcher thread woken through
`signal.set_wakeup_fd` (the C-level handler writes the signal number to a pipe): unlike an
exception from a Python handler it cannot be swallowed (a KeyboardInterrupt landing in a gc
callback, a `__del__` or a `finally` is only printed as "Exception ignored"), and it is not held
back while the main thread waits in C code (XLA, an orbax wait). Before exiting it runs the
`on_abort` callbacks (the checkpoints delete their unfinished saves and name the last complete
step), flushes the logs and prints one line.
"""

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# main.py's exit status after a stop on request (checkpoint saved; rerun to resume), so that a
# launcher can requeue: EX_TEMPFAIL of sysexits.h. Finished runs exit 0.
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130  # a second Ctrl-C: 128 + SIGINT, what a shell reports for Ctrl-C
_requested = threading.Event()
_on_abort: list[Callable[[], str | None]] = []
_exit = os._exit  # how a second Ctrl-C ends the process (tests replace it)
_our_wakeup_fds: set[int] = set()  # an outer `handlers()` block's: not forwarded to


def request_stop(signum: int | None = None, frame=None) -> None:
  """Asks the running loop to save and stop (also callable directly, e.g. from a hook)."""
  del frame
  if _requested.is_set():
    return
  name = signal.Signals(signum).name if signum else "stop request"
  logging.warning("%s: finishing the current step and saving a checkpoint", name)
  _requested.set()


@contextlib.contextmanager
def on_abort(callback: Callable[[], str | None]) -> Iterator[None]:
  """Inside the block a second Ctrl-C calls `callback()` before exiting; what it returns (e.g.
  "the last complete checkpoint is step 40") goes into the exit line. It runs in another thread
  while the main one may be anywhere (inside orbax, XLA): it should only touch files."""
  _on_abort.append(callback)
  try:
    yield
  finally:
    _on_abort.remove(callback)


def _flush(timeout: float = 2.0) -> None:
  """Flushes absl logging and stdio; gives up after `timeout` (the main thread, stopped
  anywhere, could hold a stream's lock)."""

  def flush():
    with contextlib.suppress(Exception):
      logging.flush()
      sys.stdout.flush()
      sys.stderr.flush()

  flusher = threading.Thread(target=flush, name="flush-before-exit", daemon=True)
  flusher.start()
  flusher.join(timeout)


def _abort() -> None:
  """A second Ctrl-C: cleans up, says so in one line on stderr and exits with status 130."""
  _flush()
  notes = []
  for callback in list(_on_abort):
    try:
      notes.append(callback())
    except Exception as e:  # noqa: BLE001 - exit anyway, saying what went wrong
      notes.append(f"cleaning up failed ({type(e).__name__}: {e})")
  line = "; ".join(
    ["second interrupt: stopped without a final checkpoint", *filter(None, notes)]
  ) + " (run the same command to resume)\n"  # fmt: skip
  with contextlib.suppress(OSError):
    os.write(2, line.encode())  # one write, no lock: right before the exit
  _exit(EXIT_INTERRUPTED)


def _watch(read_fd: int, forward_fd: int) -> None:
  """Acts on the signal numbers the C-level handler writes; a 0 byte (no signal has it) or the
  pipe's end stops the watch."""
  while True:
    try:
      data = os.read(read_fd, 64)
    except OSError:
      return
    signums = data.split(b"\0", 1)[0]
    if forward_fd != -1 and signums:  # an outer wakeup fd (e.g. asyncio's) still sees them
      with contextlib.suppress(OSError):
        os.write(forward_fd, signums)
    for signum in signums:
      if signum == signal.SIGINT and _requested.is_set():
        _abort()
      elif signum in SIGNALS:
        request_stop(signum)
    if not data or len(signums) < len(data):
      return


@contextlib.contextmanager
def handlers() -> Iterator[None]:
  """SIGTERM and SIGINT request a clean stop inside the block, a second SIGINT exits (status
  130); the previous handlers and wakeup fd (e.g. Ctrl-C raising KeyboardInterrupt) are back
  after it. Clears an earlier run's request on entry."""
  _requested.clear()
  if threading.current_thread() is not threading.main_thread():  # signals reach the main thread
    yield
    return
  read_fd, write_fd = os.pipe()
  os.set_blocking(write_fd, False)  # set_wakeup_fd requires it
  watching = True

  def python_handler(signum, frame):  # the watcher acts; this one only outside its watch
    if not watching:
      request_stop(signum, frame)

  previous = {s: signal.getsignal(s) for s in SIGNALS}
  previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
  forward_fd = -1 if previous_fd in _our_wakeup_fds else previous_fd
  _our_wakeup_fds.add(write_fd)
  watcher = threading.Thread(
    target=_watch, args=(read_fd, forward_fd), name="stop-requests", daemon=True
  )
  watcher.start()
  for s in SIGNALS:
    signal.signal(s, python_handler)
  try:
    yield
  finally:
    signal.set_wakeup_fd(previous_fd)
    watching = False  # a signal between these two lines still requests a stop
    for s, handler in previous.items():
      signal.signal(s, signal.SIG_DFL if handler is None else handler)
    os.write(write_fd, b"\0")
    watcher.join(timeout=10)
    if not watcher.is_alive():  # else it is still exiting (a second Ctrl-C): leave its pipe
      _our_wakeup_fds.discard(write_fd)
      os.close(read_fd)
      os.close(write_fd)


def stop_requested() -> bool:
  """Whether any process was asked to stop (a collective: every process calls it each step)."""
  local = _requested.is_set()
  if jax.process_count() == 1:
    return local
  return bool(np.max(multihost_utils.process_allgather(np.array(local))))
