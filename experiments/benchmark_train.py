"""Train-step benchmark: a Transformer language model through the real jitted train step.

Model FLOP utilisation (MFU) = achieved model FLOP/s over the device's measured matmul rate,
with model FLOPs per token = 6 N + 12 L d T (Chowdhery et al. 2022, PaLM, appendix B: N
parameters, L layers, width d, context T; the backward pass counts twice the forward).
"""

import statistics
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np

import models
from configs import default
from experiments import optim, sharding, train
from experiments.device_info import machine, matmul_rate
from input_pipeline.base import TaskInfo

SETTINGS = {"emb_dim": 512, "num_heads": 8, "layers": 6, "mlp_dim": 2048, "length": 512}


def lm_config(batch: int, vocab: int, dtype: str):
  config = default.get_config()
  config.model.update(
    name="decoder_lm", emb_dim=SETTINGS["emb_dim"], qkv_dim=SETTINGS["emb_dim"],
    num_heads=SETTINGS["num_heads"], num_decoder_layers=SETTINGS["layers"],
    mlp_dim=SETTINGS["mlp_dim"], max_len=SETTINGS["length"], dtype=dtype,
  )  # fmt: skip
  config.data.batch_size = batch
  config.optimizer.grad_clip_norm = 1.0
  return config


def run(
  batch: int = 8, vocab: int = 8192, dtype: str = "float32", steps: int = 5
) -> dict[str, Any]:
  """Times `steps` train steps after 2 warm-up steps; returns tokens/s, step time and MFU."""
  config = lm_config(batch, vocab, dtype)
  t = SETTINGS["length"]
  info = TaskInfo(kind="lm", vocab_size=vocab, max_input_length=t)
  model = models.build(config.model, info)
  mesh = sharding.make_mesh(config.mesh.shape)
  tx = optim.create(config.optimizer, 1000)
  rng = np.random.default_rng(0)
  batches = [
    {"inputs": rng.integers(1, vocab, (batch, t), dtype=np.int32)} for _ in range(steps + 2)
  ]
  with nn.logical_axis_rules(tuple(tuple(r) for r in config.mesh.logical_axis_rules)):
    state, state_sharding = train.create_state(config, model, tx, mesh, batches[0])
    step = train.make_steps(config, "lm", state_sharding, mesh).train
    device_batches = [sharding.global_batch(b, mesh) for b in batches]
    executable = step.compile(state, device_batches[0])
    times = []
    for i, b in enumerate(device_batches):
      start = time.perf_counter()
      state, _, _ = executable(state, b)
      jax.block_until_ready(state)
      if i >= 2:
        times.append(time.perf_counter() - start)
  n = sum(x.size for x in jax.tree.leaves(nn.unbox(state.params)))
  d, layers = SETTINGS["emb_dim"], SETTINGS["layers"]
  flops_per_token = 6 * n + 12 * layers * d * t
  step_s = statistics.median(times)
  tokens = batch * t
  peak = matmul_rate("bfloat16" if dtype == "bfloat16" else "float32")
  achieved = flops_per_token * tokens / step_s / 1e9
  cost = executable.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return {
    "model": f"decoder_lm d={d} heads={SETTINGS['num_heads']} layers={layers} "
    f"mlp={SETTINGS['mlp_dim']} T={t} vocab={vocab}",
    "dtype": dtype,
    "batch": batch,
    "params": int(n),
    "step_ms": round(1e3 * step_s, 1),
    "tokens_per_sec": round(tokens / step_s, 1),
    "model_gflops_per_step": round(flops_per_token * tokens / 1e9, 1),
    "xla_gflops_per_step": round(float(cost.get("flops", 0.0)) / 1e9, 1),
    "achieved_gflops_per_s": round(achieved, 1),
    "matmul_gflops_per_s": round(peak, 1),
    "mfu": round(achieved / peak, 3),
    "compile_s": round(step.compile_seconds, 1),
    "machine": machine(),
  }
