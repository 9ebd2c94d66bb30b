"""Run hygiene: one process per workdir (a lock the OS frees on death), a second Ctrl-C, resume
from the newest complete checkpoint, a removed checkpoints/ and --restart, reruns."""

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments.run import checkpoints, tasks, train, validate, workdir
from tests.helpers import (
  ROOT,
  TINY_FLAGS,
  Main,
  checkpoint_steps,
  read_json,
  records,
  tiny_config,
)  # fmt: skip

HOLD = """
import sys, time
from experiments.run import workdir
lock = workdir.exclusive(sys.argv[1])
lock.__enter__()
print("held", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_second_process_is_refused_while_the_first_trains(tmp_path):
  run = tmp_path / "run"
  flags = [
    *TINY_FLAGS,
    "--config.train.num_steps=100000",
    "--config.train.checkpoint_every_steps=1",
  ]
  first = Main(run, *flags)
  first.wait_for(lambda: (run / "metrics.jsonl").exists(), timeout=300)  # training
  second = Main(run, *flags)
  assert second.wait() == 2, second.output()[-3000:]
  errors = [line for line in second.output().splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and f"is in use by process {first.proc.pid} on " in errors[0], errors
  assert first.proc.poll() is None  # the holder trains on

  # A second Ctrl-C during the final save is not checked here: a KeyboardInterrupt raised by
  # the handler can land in a garbage-collection callback, where Python ignores it (flaky).
  first.proc.send_signal(signal.SIGINT)
  assert first.wait() == 75, first.output()[-3000:]  # stopped on request, checkpoint saved
  assert "Traceback" not in first.output()
  assert checkpoint_steps(run) and not glob.glob(str(run / "checkpoints" / "*" / "*tmp*"))


def test_a_killed_holder_never_blocks(tmp_path):
  holder = subprocess.Popen(
    [sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
  )
  assert holder.stdout.readline().strip() == "held"
  refused = pytest.raises(validate.ConfigError, match=f"in use by process {holder.pid} on ")
  with refused, workdir.exclusive(str(tmp_path)):
    pass
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  with workdir.exclusive(str(tmp_path)):
    assert f"process {os.getpid()} " in (tmp_path / workdir.LOCK).read_text()


def _state(value: float) -> dict:
  return {"w": np.full((4,), value, np.float32), "step": np.int32(value)}


def test_resume_takes_the_newest_complete_checkpoint_and_deletes_nothing(tmp_path):
  """Killed between the best save and the next latest save: the best one is newer."""
  with checkpoints.Checkpoints(str(tmp_path), 2, "accuracy", "max") as ckpt:
    ckpt.save(2, _state(2), {"next_batch": 2}, force=True)
    ckpt.save_best(4, _state(4), {"next_batch": 4}, {"accuracy": 0.5})
  with checkpoints.Checkpoints(str(tmp_path), 2, "accuracy", "max") as ckpt:
    state, meta = ckpt.restore_latest(None)
    assert meta["next_batch"] == 4 and int(state["step"]) == 4
    assert ckpt.best.all_steps() == [4] and ckpt.latest.all_steps() == [2]


@pytest.mark.slow
def test_rerun_keeps_throughput_and_lost_checkpoints_ask_for_restart(tmp_path):
  config = tiny_config(steps=4)
  config.train.update(log_every_steps=2, eval_every_steps=4, checkpoint_every_steps=4)
  done = train.train_and_evaluate(config, str(tmp_path))
  assert done["throughput"]["steps_per_sec"] is not None
  origin = done["provenance"]
  assert len(origin["git_commit"]) == 40 and isinstance(origin["git_dirty"], bool)
  assert origin["versions"]["jax"] and origin["versions"]["flax"] and origin["device_count"] >= 1
  rates = [r["train/learning_rate"] for r in records(tmp_path) if "train/learning_rate" in r]
  assert len(rates) == 2 and 0 < rates[0] < rates[1]  # warming up
  norms = [r["train/grad_norm"] for r in records(tmp_path) if "train/loss" in r]
  assert len(norms) == 2 and all(n > 0 for n in norms)
  again = train.train_and_evaluate(config, str(tmp_path))  # finished: trains nothing
  assert (
    again["throughput"] == done["throughput"] == read_json(tmp_path / "results.json")["throughput"]
  )
  shutil.rmtree(tmp_path / "checkpoints")
  with pytest.raises(validate.ConfigError, match="metrics.jsonl but no checkpoints/.*--restart"):
    train.train_and_evaluate(config, str(tmp_path))
  fresh = train.train_and_evaluate(config, str(tmp_path), restart=True)
  assert fresh["step"] == 4 and checkpoint_steps(tmp_path) == [4]
  kept = sorted(os.listdir(tmp_path / "previous.1"))
  assert {"config.json", "metrics.jsonl", "results.json"} <= set(kept), kept


def test_lm_reports_perplexity():
  assert tasks.with_derived("lm", {"loss": 2.0}) == {"loss": 2.0, "perplexity": np.exp(2.0)}
  assert tasks.with_derived("seq2seq", {"loss": 2.0}) == {"loss": 2.0}


def test_one_progress_line_per_interval_and_exit_right_after_the_results(tmp_path):
  run = tmp_path / "run"
  main = Main(run, *TINY_FLAGS, "--config.train.num_steps=10", "--config.train.eval_every_steps=10")
  assert main.wait() == 0, main.output()[-3000:]
  exited = time.time()
  out = main.output()
  assert len(re.findall(r"step \d+/10 ", out)) == 2, out[-3000:]  # steps 5 and 10
  assert "train/loss=" not in out  # no second writer repeating them
  # 2 s on an idle machine (it was 4-62 s: tf.data threads); CI shares its two cores
  assert exited - os.path.getmtime(run / "results.json") < 5.0
