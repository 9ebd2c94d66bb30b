"""What several test files share: a tiny version of the default experiment (in-process and as
main.py flags), main.py in a subprocess, a tiny sweep experiment file, readers of a workdir."""

import json
import os
import subprocess
import sys
import tempfile
import time

import ml_collections
import numpy as np

from configs import default


def tiny_config(steps: int = 24, **model) -> ml_collections.ConfigDict:
  config = default.get_config(f"steps={steps}")
  config.data.update(vocab_size=16, min_length=2, max_length=8, batch_size=16, eval_examples=40)
  config.model.update(
    emb_dim=32, qkv_dim=32, mlp_dim=64, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
    max_len=16, **model,
  )  # fmt: skip
  config.optimizer.warmup_steps = 4
  config.train.update(
    eval_every_steps=steps // 2, log_every_steps=4, checkpoint_every_steps=steps // 2
  )
  return config


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# configs/default.py shrunk to seconds of CPU (main.py flags, like a user would pass them).
TINY_MODEL_FLAGS = [
  "--config.data.max_length=8",
  "--config.data.batch_size=16",
  "--config.data.eval_examples=32",
  "--config.model.emb_dim=32",
  "--config.model.qkv_dim=32",
  "--config.model.mlp_dim=64",
  "--config.model.num_encoder_layers=1",
  "--config.model.num_decoder_layers=1",
]
TINY_FLAGS = ["--config=configs/default.py", *TINY_MODEL_FLAGS, "--config.train.log_every_steps=5"]
ENV = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "true", "TF_CPP_MIN_LOG_LEVEL": "3"}


class Main:
  """`python main.py FLAGS --workdir=W` in a subprocess; output to a file (a pipe could fill up)."""

  def __init__(self, workdir, *flags: str, env: dict[str, str] | None = None, cache=None):
    """`cache`: a JAX compilation cache folder shared by the launches of one test (one writer
    per program at a time: JAX writes entries in place)."""
    workdir = os.fspath(workdir)
    if cache is not None:
      env = {
        "JAX_COMPILATION_CACHE_DIR": os.fspath(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        **(env or {}),
      }
    logs = os.path.dirname(workdir)
    while not os.path.isdir(logs):  # e.g. a workdir under a file
      logs = os.path.dirname(logs)
    fd, self.log = tempfile.mkstemp(prefix="main.", suffix=".log", dir=logs)
    with os.fdopen(fd, "w") as out:
      self.proc = subprocess.Popen(
        [sys.executable, "main.py", *flags, f"--workdir={workdir}"],
        cwd=ROOT,
        env={**os.environ, **ENV, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
      )

  def output(self) -> str:
    with open(self.log) as f:
      return f.read()

  def wait(self, timeout: float = 300) -> int:
    return self.proc.wait(timeout=timeout)

  def wait_for(self, predicate, timeout: float = 300) -> None:
    start = time.time()
    while not predicate():
      assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.output()[-3000:]}"
      assert time.time() - start < timeout, "timed out"
      time.sleep(0.05)


EXPERIMENT = """
import sys
sys.path.insert(0, {root!r})
from configs.common import axis, chain
from tests.helpers import tiny_config

def get_config(arg=None):
  return tiny_config(steps={steps})

def get_sweep(arg=None):
  return {sweep}
"""


def write_experiment(path, sweep_expr: str, steps: int = 6) -> str:
  path.write_text(EXPERIMENT.format(root=ROOT, steps=steps, sweep=sweep_expr))
  return str(path)


def checkpoint_steps(workdir) -> list[int]:
  """Complete checkpoints in workdir/checkpoints/latest (what orbax would list)."""
  directory = os.path.join(workdir, "checkpoints", "latest")
  return (
    sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []
  )


def read_json(path):
  with open(path) as f:
    return json.load(f)


def records(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


PARALLEL_WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "big", "red", "runs"]


def parallel_text(directory, sizes=(("train", 160), ("dev", 16), ("test", 16))) -> dict:
  """Tiny line-aligned files (targets: the source words reversed), 2-12 words a line."""
  rng = np.random.default_rng(0)
  fields = {}
  for split, n in sizes:
    lines = [" ".join(rng.choice(PARALLEL_WORDS, rng.integers(2, 13))) for _ in range(n)]
    for side, text in (("src", lines), ("tgt", [" ".join(ln.split()[::-1]) for ln in lines])):
      path = directory / f"{split}.{side}"
      path.write_text("\n".join(text) + "\n")
      fields[f"{split}_{side}"] = str(path)
  return fields
