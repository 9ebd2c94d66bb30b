"""Run hygiene: one process per workdir (a lock the OS frees on death), damaged side files,
resume and exit codes."""

import os
import signal

from experiments.run import workdir
from tests.helpers import TINY_FLAGS, Main


def test_second_process_on_a_workdir_is_refused_and_kill_9_frees_it(tmp_path):
  run = tmp_path / "run"
  first = Main(run, *TINY_FLAGS, "--config.train.num_steps=100000")
  first.wait_for(lambda: (run / "metrics.jsonl").exists(), timeout=300)  # training
  second = Main(run, *TINY_FLAGS, "--config.train.num_steps=100000")
  assert second.wait() == 2, second.output()[-3000:]
  errors = [line for line in second.output().splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and f"is in use by process {first.proc.pid} on " in errors[0], errors
  assert first.proc.poll() is None  # the holder trains on
  first.proc.send_signal(signal.SIGKILL)
  first.wait()
  with workdir.exclusive(str(run)):  # a dead holder never blocks
    assert f"process {os.getpid()} " in (run / workdir.LOCK).read_text()
