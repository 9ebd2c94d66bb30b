"""Run hygiene: one process per workdir (a lock the OS frees on death), a second Ctrl-C, a full
disk, resume from the newest complete checkpoint, a removed checkpoints/ and --restart, reruns,
the exit right after the results."""

import ctypes
import errno
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

  first.proc.send_signal(signal.SIGINT)
  assert first.wait() == 75, first.output()[-3000:]  # stopped on request, checkpoint saved
  assert "Traceback" not in first.output()
  assert checkpoint_steps(run) and not glob.glob(str(run / "checkpoints" / "*" / "*tmp*"))


# sitecustomize.py of a run whose save of step SLOW_SAVE_STEP never ends (its meta file waits):
# the main thread then blocks in orbax's wait, as in a real long save.
SLOW_SAVE = """
import asyncio, os
from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler

step, real = os.environ["SLOW_SAVE_STEP"], handler.JsonCheckpointHandler._save_fn

async def save_fn(self, x, directory):
  if os.path.basename(os.path.dirname(os.fspath(directory))).startswith(step + "."):
    open(os.environ["SLOW_SAVE_MARK"], "w").close()
    await asyncio.sleep(600)
  return await real(self, x, directory)

handler.JsonCheckpointHandler._save_fn = save_fn
"""


def _unfinished(run) -> list[str]:
  return glob.glob(str(run / "checkpoints" / "*" / f"*{checkpoints.TMP_MARK}*"))


@pytest.mark.slow
def test_second_ctrl_c_exits_130_at_once_even_inside_a_save_and_the_rerun_resumes(tmp_path):
  """Ctrl-C while the main thread waits for a save in progress (orbax, C code), then a second
  Ctrl-C: exit 130 with one line, no traceback, the unfinished save deleted; the same command
  then resumes from the last complete checkpoint and finishes."""
  run, site, mark = tmp_path / "run", tmp_path / "site", tmp_path / "saving"
  site.mkdir()
  (site / "sitecustomize.py").write_text(SLOW_SAVE)
  flags = [*TINY_FLAGS, "--config.train.num_steps=15", "--config.train.checkpoint_every_steps=5"]
  cache = tmp_path / "jax_cache"
  env = {
    "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]),
    "SLOW_SAVE_STEP": "10",
    "SLOW_SAVE_MARK": str(mark),
  }
  first = Main(run, *flags, env=env, cache=cache)
  first.wait_for(mark.exists, timeout=300)  # step 5 is saved, the save of step 10 hangs
  first.proc.send_signal(signal.SIGINT)
  first.wait_for(lambda: "SIGINT: finishing the current step" in first.output(), timeout=60)
  first.proc.send_signal(signal.SIGINT)
  assert first.wait(timeout=60) == 130, first.output()[-3000:]
  out = first.output()
  assert "Traceback" not in out and "Exception ignored" not in out, out[-3000:]
  lines = [line for line in out.splitlines() if "second interrupt" in line]
  assert lines == [
    "second interrupt: stopped without a final checkpoint; the last complete checkpoint is "
    "step 5 (run the same command to resume)"
  ], out[-3000:]
  assert checkpoint_steps(run) == [5] and not _unfinished(run)

  again = Main(run, *flags, cache=cache)
  assert again.wait() == 0, again.output()[-3000:]
  assert "resumed from step 5 " in again.output()
  assert read_json(run / "results.json")["step"] == 15 and not _unfinished(run)


MS_REMOUNT = 32  # <sys/mount.h>


def _mount(libc, target, size: str, flags: int = 0) -> None:
  if libc.mount(b"tmpfs", os.fsencode(target), b"tmpfs", flags, f"size={size}".encode()) != 0:
    code = ctypes.get_errno()
    if code == errno.EPERM:
      pytest.skip(f"mounting a tmpfs was refused (EPERM: no CAP_SYS_ADMIN here): {target}")
    raise OSError(code, f"mount -t tmpfs -o size={size} {target}: {os.strerror(code)}")


@pytest.fixture
def small_disk(tmp_path):
  """A real file system that fills up: `resize(size)` mounts (then remounts) a tmpfs of that
  size at the directory it returns; it is unmounted at the end."""
  if os.geteuid() != 0:
    pytest.skip("mounting a tmpfs needs root")
  libc = ctypes.CDLL(None, use_errno=True)
  target, mounted = tmp_path / "disk", []
  target.mkdir()

  def resize(size: str):
    _mount(libc, target, size, MS_REMOUNT if mounted else 0)
    mounted.append(size)
    return target

  yield resize
  if mounted and libc.umount2(os.fsencode(target), 0) != 0:
    libc.umount2(os.fsencode(target), 2)  # MNT_DETACH: still busy, lazily


@pytest.mark.slow
def test_disk_full_exits_2_with_one_line_and_the_run_resumes_once_there_is_space(
  tmp_path, small_disk
):
  """Checkpoints of ~20 MB on a 70 MB tmpfs: 3 fit, the 4th fills the disk (a write fails
  inside orbax's save). Exit status 2, one line naming the workdir; step 3 stays complete;
  with a bigger disk the same command resumes from it and finishes."""
  run = small_disk("70m") / "run"
  flags = [
    *TINY_FLAGS,
    "--config.model.emb_dim=256",  # ~1.7M parameters: with Adam's moments ~20 MB a checkpoint
    "--config.model.qkv_dim=256",
    "--config.model.mlp_dim=1024",
    "--config.train.num_steps=6",
    "--config.train.checkpoint_every_steps=1",
    "--config.train.keep_checkpoints=5",
  ]
  cache = tmp_path / "jax_cache"  # not on the small disk
  full = Main(run, *flags, cache=cache)
  assert full.wait() == 2, full.output()[-3000:]
  out = full.output()
  errors = [line for line in out.splitlines() if line.startswith("error:")]
  assert errors == [
    f"error: disk full under {str(run)!r}: stopped; the last complete checkpoint is kept. Free "
    "space and run the same command to resume"
  ], out[-3000:]
  assert out.count("Traceback") == 0, out[-3000:]
  assert checkpoint_steps(run) == [1, 2, 3] and not _unfinished(run)
  with checkpoints.Checkpoints(str(run), 5, "accuracy", "max") as ckpt:
    state, meta = ckpt.restore_latest(None)  # reads back, fingerprints match
  assert int(state["step"]) == meta["next_batch"] == 3

  small_disk("200m")  # remounted bigger, the files kept
  again = Main(run, *flags, cache=cache)
  assert again.wait() == 0, again.output()[-3000:]
  assert "resumed from step 3 " in again.output()
  assert read_json(run / "results.json")["step"] == 6 and not _unfinished(run)


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
  main.wait_for(lambda: (run / "results.json").exists(), timeout=300)
  try:
    main.wait(timeout=30)  # a hung exit fails here, or on the bound below
  finally:
    main.proc.kill()  # a no-op once it exited
  exited = time.time()
  assert main.proc.returncode == 0, main.output()[-3000:]
  out = main.output()
  assert len(re.findall(r"step \d+/10 ", out)) == 2, out[-3000:]  # steps 5 and 10
  assert "train/loss=" not in out  # no second writer repeating them
  # ~0.15 s (interpreter teardown took 1.5 s to a minute: tf.data threads, TF and XLA)
  assert exited - os.path.getmtime(run / "results.json") < 2.0
