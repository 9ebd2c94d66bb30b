"""Multi-process start-up: one JAX process per host (or per GPU), JAX's own distributed runtime.

* SLURM and Cloud TPU pods: `jax.distributed.initialize()` finds everything itself.
* Anywhere else: set `JAX_COORDINATOR_ADDRESS=host:port` (process 0's address), `JAX_NUM_PROCESSES`
  and `JAX_PROCESS_ID` in each process's environment.
On CPU the processes exchange data with gloo collectives.
"""

import os

import jax

CLUSTER_VARIABLES = ("SLURM_NTASKS", "TPU_WORKER_ID", "MEGASCALE_COORDINATOR_ADDRESS")


def is_multi_process() -> bool:
  if "JAX_COORDINATOR_ADDRESS" in os.environ:
    return int(os.environ.get("JAX_NUM_PROCESSES", "2")) > 1
  return int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_ID" in os.environ


def initialize() -> None:
  """Joins the other processes when launched as several; a no-op for a single process."""
  if not is_multi_process():
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only used by CPU devices
  if "JAX_COORDINATOR_ADDRESS" in os.environ:
    jax.distributed.initialize(
      coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
      process_id=int(os.environ["JAX_PROCESS_ID"]),
    )
  else:
    jax.distributed.initialize()
