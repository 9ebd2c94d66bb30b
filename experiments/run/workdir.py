"""One run per workdir: an exclusive lock on `workdir/.lock`, released by the OS when its holder
exits or dies (kill -9 included), so a stale lock never blocks.

    with workdir.exclusive(path):   # a second process exits: "... in use by process 1234 ..."
      train...
"""

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Iterator

from experiments.run.config_file import ConfigError

LOCK = ".lock"


@contextlib.contextmanager
def exclusive(workdir: str) -> Iterator[None]:
  """Holds `workdir`'s lock (creating the directory); raises ConfigError naming the holder."""
  try:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(os.path.join(workdir, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise ConfigError(
      f"workdir {workdir!r} is not writable ({e.strerror}); pick another --workdir"
    ) from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
      raise ConfigError(
        f"workdir {workdir!r} is in use by {holder}; wait for it to finish, stop it, or pick "
        "another --workdir"
      ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock; the file stays (removing it would race a new holder)


def disk_full(error: BaseException | None) -> bool:
  """Whether `error`, or an error it was raised from, is ENOSPC (No space left on device)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False
