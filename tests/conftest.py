"""Test-wide settings: small, fast compiles on the 2-core CI machine."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], "GPU")
jax.config.update("jax_disable_most_optimizations", True)


# PostgreSQL for the search storage test (tests/test_search.py): the server .ci/run started
# (SEARCH_POSTGRES_URL), else a throw-away cluster started here from the Debian packages on
# loopback; where none can be started the test is skipped with the reason (in CI it fails).

import glob  # noqa: E402
import pwd  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402

import pytest  # noqa: E402


def _postgres_bin() -> str:
  """The newest installed PostgreSQL's bin folder (Debian: /usr/lib/postgresql/N/bin)."""
  found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
  if found:
    return os.path.dirname(found[-1])
  initdb = shutil.which("initdb")
  if initdb is None:
    raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
  return os.path.dirname(initdb)


def _as_server_user(command: list[str]) -> list[str]:
  """PostgreSQL refuses to run as root: as root, commands run as the `postgres` user."""
  if os.geteuid() != 0:
    return command
  return ["runuser", "-u", "postgres", "--", *command]


def start_postgres() -> tuple[str, Callable[[], None]]:
  """Starts a throw-away cluster on 127.0.0.1; returns (URL, stop)."""
  bin_dir = _postgres_bin()
  data = tempfile.mkdtemp(prefix="pg.")
  if os.geteuid() == 0:
    user = pwd.getpwnam("postgres")  # KeyError where the package is not installed
    os.chown(data, user.pw_uid, user.pw_gid)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  run = lambda *c: subprocess.run(  # noqa: E731
    _as_server_user(list(c)), check=True, capture_output=True, text=True, timeout=120
  )
  run(f"{bin_dir}/initdb", "-D", data, "-A", "trust", "-U", "postgres")
  run(f"{bin_dir}/pg_ctl", "-D", data, "-l", f"{data}/log", "-w", "-o",
      f"-h 127.0.0.1 -p {port} -k {data}", "start")  # fmt: skip

  def stop() -> None:
    subprocess.run(_as_server_user([f"{bin_dir}/pg_ctl", "-D", data, "-m", "fast", "stop"]),
                   capture_output=True, timeout=120)  # fmt: skip
    shutil.rmtree(data, ignore_errors=True)

  return f"postgresql://postgres@127.0.0.1:{port}/postgres", stop


@pytest.fixture(scope="session")
def postgresql_url():
  """A PostgreSQL server's URL (user postgres, no password, loopback)."""
  url = os.environ.get("SEARCH_POSTGRES_URL")
  if url:
    yield url
    return
  try:
    url, stop = start_postgres()
  except (OSError, KeyError, RuntimeError, subprocess.SubprocessError) as e:
    detail = getattr(e, "stderr", None) or str(e)
    reason = f"no PostgreSQL server could be started: {type(e).__name__}: {detail}".strip()
    if os.environ.get("CI"):
      pytest.fail(reason)  # CI starts one in .ci/run: a missing server is a failure there
    pytest.skip(reason.splitlines()[0])
  try:
    yield url
  finally:
    stop()


def pytest_terminal_summary(terminalreporter):
  """Says why a search test was skipped (e.g. no PostgreSQL server)."""
  for report in terminalreporter.stats.get("skipped", []):
    if "test_search" in report.nodeid and isinstance(report.longrepr, tuple):
      terminalreporter.write_line(f"SKIPPED {report.nodeid}: {report.longrepr[2]}")
