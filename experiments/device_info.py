"""What a benchmark row needs to say about the machine: its name and its measured matmul rate."""

import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp


def matmul_rate(dtype: str = "float32", n: int = 2048, repeats: int = 10) -> float:
  """Measured GFLOP/s of an n x n matmul: the device's practical peak for utilisation figures."""
  a, b = (
    jax.random.normal(k, (n, n), jnp.dtype(dtype)) for k in jax.random.split(jax.random.key(0))
  )
  f = jax.jit(jnp.matmul).lower(a, b).compile()
  jax.block_until_ready(f(a, b))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a, b))
    times.append(time.perf_counter() - t0)
  return 2.0 * n**3 / statistics.median(times) / 1e9


def machine() -> str:
  cpu = platform.processor() or "unknown CPU"
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
    cpu = names[0] if names else cpu
  dev = jax.devices()[0]
  kind = dev.device_kind if dev.platform != "cpu" else cpu
  return f"{kind}, {os.cpu_count()} cores, jax {jax.__version__}, backend {jax.default_backend()}"
