"""JAX's distributed runtime for real: two CPU processes (gloo collectives, a coordinator on
localhost) train as one, stop together when only one of them is signalled, and resume together;
plus how `experiments.run.distributed` reads a launch from the environment."""

import signal
import socket

import numpy as np
import pytest

from experiments.run import distributed, preemption
from tests.helpers import TINY_FLAGS, Main, checkpoint_steps, read_json, records


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(workdir, num_processes: int, *flags: str, cache=None) -> list[Main]:
  address = f"localhost:{_free_port()}"
  return [
    Main(
      workdir,
      *flags,
      env={
        "JAX_COORDINATOR_ADDRESS": address,
        "JAX_NUM_PROCESSES": str(num_processes),
        "JAX_PROCESS_ID": str(i),
      },
      cache=cache,
    )
    for i in range(num_processes)
  ]


@pytest.mark.slow
def test_two_processes_train_like_one_stop_together_and_resume(tmp_path):
  """Same global batch (each process reads its half: the losses match one process only if the
  halves are disjoint and complete), SIGTERM to process 1 alone stops both at the same step with
  one checkpoint, and the same two commands resume from it to the end."""
  flags = [
    *TINY_FLAGS,
    "--config.train.num_steps=80",
    "--config.train.checkpoint_every_steps=20",
    "--config.train.eval_every_steps=40",
    "--config.train.sync_every_steps=8",
  ]
  one = Main(tmp_path / "one", *flags)  # meanwhile: the single-process reference
  two, cache = tmp_path / "two", tmp_path / "jax_cache"

  procs = _launch(two, 2, *flags, cache=cache)
  procs[1].wait_for(lambda: (two / "metrics.jsonl").exists())
  procs[1].proc.send_signal(signal.SIGTERM)
  for p in procs:
    assert p.wait() == preemption.EXIT_PREEMPTED, p.output()[-3000:]
  outs = [p.output() for p in procs]
  assert "JAX process 0/2" in outs[0] and "JAX process 1/2" in outs[1]
  assert "SIGTERM" in outs[1] and "SIGTERM" not in outs[0]
  stopped = checkpoint_steps(two)[-1]
  assert 0 < stopped < 80 and stopped % 8 == 0  # stop requests are agreed every 8 steps
  assert all(f"stopped at step {stopped} on request" in out for out in outs)

  procs = _launch(two, 2, *flags, cache=cache)
  for p in procs:
    assert p.wait() == 0, p.output()[-3000:]
    assert f"resumed from step {stopped} " in p.output()
  assert one.wait() == 0, one.output()[-3000:]
  single, double = read_json(tmp_path / "one" / "results.json"), read_json(two / "results.json")
  assert double["step"] == 80 and double["best_step"] == single["best_step"]
  for key, value in single["metrics"].items():
    np.testing.assert_allclose(double["metrics"][key], value, rtol=1e-5, err_msg=key)
  first = [r for r in records(two) if r["step"] <= min(stopped, 40) and "train/loss" in r]
  reference = {r["step"]: r["train/loss"] for r in records(tmp_path / "one") if "train/loss" in r}
  assert first  # before the stop: the very same batches, step by step
  for r in first:
    np.testing.assert_allclose(r["train/loss"], reference[r["step"]], rtol=1e-5, err_msg=r["step"])


SLURM_STEP = {
  "SLURM_JOB_ID": "7",
  "SLURM_STEP_NODELIST": "node[1-4]",
  "SLURM_NTASKS": "4",
  "SLURM_PROCID": "2",
  "SLURM_LOCALID": "0",
}
EXPLICIT = {
  "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
  "JAX_NUM_PROCESSES": "2",
  "JAX_PROCESS_ID": "1",
}


@pytest.mark.parametrize(
  ("env", "expected"),
  [
    ({}, None),
    (EXPLICIT, {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}),
    ({**EXPLICIT, "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}, None),
    ({**EXPLICIT, **SLURM_STEP}, {"coordinator_address": "10.0.0.1:1234", "num_processes": 2,
                                  "process_id": 1}),
    (SLURM_STEP, {}),  # JAX reads SLURM's variables itself
    ({**SLURM_STEP, "JAX_COORDINATOR_ADDRESS": "node1:5000"}, {}),  # a chosen port on SLURM
    ({**SLURM_STEP, "SLURM_NTASKS": "1"}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, None),  # the batch script, not an srun step
    ({"OMPI_COMM_WORLD_SIZE": "8"}, {}),
    ({"TPU_WORKER_ID": "0"}, {}),
  ],
)  # fmt: skip
def test_launch_arguments(env, expected):
  assert distributed.launch_arguments(env) == expected


@pytest.mark.parametrize(
  ("env", "message"),
  [
    ({"JAX_COORDINATOR_ADDRESS": "h:1"}, "set but not JAX_NUM_PROCESSES, JAX_PROCESS_ID"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "set but not JAX_COORDINATOR_ADDRESS"),
    ({**EXPLICIT, "JAX_PROCESS_ID": "2"}, r"JAX_PROCESS_ID=2 must be in \[0, JAX_NUM_PROCESSES=2"),
    ({**EXPLICIT, "JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES='two' must be an integer"),
    ({**EXPLICIT, "JAX_COORDINATOR_ADDRESS": "10.0.0.1"}, "must be host:port"),
  ],
)  # fmt: skip
def test_bad_launch_variables_say_what_to_set(env, message):
  with pytest.raises(distributed.LaunchError, match=message):
    distributed.launch_arguments(env)
