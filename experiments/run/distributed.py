"""Multi-process start-up: one JAX process per host (or per GPU), JAX's own distributed runtime.

How the processes find each other, in this order:
* `JAX_COORDINATOR_ADDRESS=host:port` (process 0's address and a free port), `JAX_NUM_PROCESSES`
  and `JAX_PROCESS_ID` in each process's environment: used as given (any launcher, any machine).
* Inside a SLURM job step (`srun`, more than one task), an Open MPI launch (`mpirun`), or on a
  Cloud TPU pod (`TPU_WORKER_ID`): `jax.distributed.initialize()` reads the cluster's variables.
* Otherwise one process; nothing to do.
A partial or inconsistent set of `JAX_*` variables is an error, not a silent single-process run.
On CPU the processes exchange data with gloo collectives.
"""

import os
from collections.abc import Mapping
from typing import Any

import jax
from absl import logging

EXPLICIT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# What JAX's own SLURM detection needs: set inside a job step, not in a bare allocation.
SLURM_STEP = (
  "SLURM_JOB_ID",
  "SLURM_STEP_NODELIST",
  "SLURM_NTASKS",
  "SLURM_PROCID",
  "SLURM_LOCALID",
)


class LaunchError(ValueError):
  """The environment describes a multi-process launch that cannot work."""


def _int(env: Mapping[str, str], name: str) -> int:
  try:
    return int(env[name])
  except ValueError:
    raise LaunchError(f"{name}={env[name]!r} must be an integer") from None


def _cluster(env: Mapping[str, str]) -> str | None:
  """The cluster whose variables describe more than one process, if any."""
  if all(k in env for k in SLURM_STEP) and _int(env, "SLURM_NTASKS") > 1:
    return "SLURM"
  if "OMPI_COMM_WORLD_SIZE" in env and _int(env, "OMPI_COMM_WORLD_SIZE") > 1:
    return "Open MPI"
  if "TPU_WORKER_ID" in env or "MEGASCALE_COORDINATOR_ADDRESS" in env:
    return "Cloud TPU"
  return None


def launch_arguments(env: Mapping[str, str] = os.environ) -> dict[str, Any] | None:
  """`jax.distributed.initialize`'s arguments for this environment: None for a single process,
  {} to let JAX read a cluster's variables, else the explicit address, count and id."""
  given = [k for k in EXPLICIT if env.get(k)]
  cluster = _cluster(env)
  if given and len(given) < len(EXPLICIT):
    if cluster:  # e.g. a chosen coordinator port on SLURM: JAX reads the rest from the cluster
      return {}
    missing = [k for k in EXPLICIT if k not in given]
    raise LaunchError(
      f"{', '.join(given)} set but not {', '.join(missing)}; a multi-process launch needs all of "
      f"{', '.join(EXPLICIT)} in every process's environment (see docs/long_runs.md)"
    )
  if given:
    address = env["JAX_COORDINATOR_ADDRESS"]
    count, index = _int(env, "JAX_NUM_PROCESSES"), _int(env, "JAX_PROCESS_ID")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
      raise LaunchError(f"JAX_COORDINATOR_ADDRESS={address!r} must be host:port")
    if count < 1 or not 0 <= index < count:
      raise LaunchError(
        f"JAX_PROCESS_ID={index} must be in [0, JAX_NUM_PROCESSES={count}); process ids are "
        "0, 1, ..., N-1"
      )
    if count == 1:
      return None
    return {"coordinator_address": address, "num_processes": count, "process_id": index}
  return {} if cluster else None


def initialize() -> None:
  """Joins the other processes when launched as several; a no-op for a single process.

  Call before anything touches a JAX device.
  """
  arguments = launch_arguments()
  if arguments is None:
    return
  # Read only by the CPU backend (it has no collectives by default); harmless on GPU/TPU hosts.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  logging.info(
    "joining a multi-process run (%s)",
    ", ".join(f"{k}={v}" for k, v in arguments.items()) or f"{_cluster(os.environ)} variables",
  )
  jax.distributed.initialize(**arguments)
