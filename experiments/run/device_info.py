"""What a benchmark row needs to say about the machine: its name and its measured matmul rate."""

import os
import platform
import time

import jax
import jax.numpy as jnp


def matmul_rate(dtype: str = "float32", n: int | None = None, repeats: int = 10) -> float:
  """Measured GFLOP/s of an n x n matmul (n = 2048 on CPU, 8192 on accelerators): the best of
  `repeats` calls, the device's practical peak for utilisation figures."""
  n = n or (2048 if jax.default_backend() == "cpu" else 8192)
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
  return 2.0 * n**3 / min(times) / 1e9


def machine() -> str:
  cpu = platform.processor() or "unknown CPU"
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
    cpu = names[0] if names else cpu
  dev = jax.devices()[0]
  kind = dev.device_kind if dev.platform != "cpu" else cpu
  return f"{kind}, {os.cpu_count()} cores, jax {jax.__version__}, backend {jax.default_backend()}"
