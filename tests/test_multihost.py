"""JAX's distributed runtime for real: two CPU processes (gloo) train as one."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.test_fault_tolerance import ROOT, TINY_FLAGS


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run(workdir, num_processes, steps):
  port = _free_port()
  procs = []
  for i in range(num_processes):
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "true", "TF_CPP_MIN_LOG_LEVEL": "3"}
    if num_processes > 1:
      env |= {
        "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
        "JAX_NUM_PROCESSES": str(num_processes),
        "JAX_PROCESS_ID": str(i),
      }
    cmd = [
      sys.executable, "main.py", *TINY_FLAGS, f"--workdir={workdir}",
      f"--config.train.num_steps={steps}", "--config.train.checkpoint_every_steps=10",
      "--config.train.eval_every_steps=10",
    ]  # fmt: skip
    procs.append(
      subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    )
  outs = [p.communicate(timeout=600)[0].decode() for p in procs]
  for p, out in zip(procs, outs, strict=True):
    assert p.returncode == 0, out[-3000:]
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f), outs


@pytest.mark.slow
def test_two_processes_match_one_and_resume_together(tmp_path):
  single, _ = _run(tmp_path / "one", 1, steps=20)
  double, outs = _run(tmp_path / "two", 2, steps=20)
  assert all("JAX process 1/2" in out or "JAX process 0/2" in out for out in outs)
  for key, value in single["metrics"].items():
    np.testing.assert_allclose(double["metrics"][key], value, rtol=1e-5, err_msg=key)
  resumed, outs = _run(tmp_path / "two", 2, steps=30)  # both processes restore step 20
  assert all("resumed from step 20" in out for out in outs)
  assert resumed["step"] == 30
