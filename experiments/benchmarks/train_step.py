"""Train-step benchmark: a Transformer language model through the real jitted train step.

    python -m experiments.benchmarks --train [--train_batch=8] [--dtype=bfloat16] [--profile]

The model: d=512, 8 heads, 6 layers, MLP 2048, T=512 (`SETTINGS`), the `decoder_lm` family when
it is registered, else the `transformer` encoder-decoder with source length = target length = T
(the result names the one used). Steps run through `experiments.run.train`'s jitted train step
(AdamW, gradient clipping) on random tokens; the median of `steps` timed steps after `warmup`.

Model FLOP utilisation (MFU) = model FLOP/s over the device's measured matmul rate. Model FLOPs
per token = 6 N + 12 L d T (Chowdhery et al. 2022, PaLM, appendix B: N parameters used in matmuls,
L layers, width d, context T; the backward pass counts twice the forward; attention is not
halved for causality). N leaves out an input embedding table that is only looked up (it counts
when the logits reuse it). `profile=True` adds where the step's time goes (op categories).
"""

import copy
import statistics
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from flax import traverse_util

import models
from experiments.run import build, sharding
from experiments.run.device_info import machine, matmul_rate
from input_pipeline.base import TaskInfo

SETTINGS = {"emb_dim": 512, "num_heads": 8, "layers": 6, "mlp_dim": 2048, "length": 512}


def family() -> str:
  """decoder_lm when registered, else the encoder-decoder."""
  return "decoder_lm" if "decoder_lm" in models.REGISTRY else "transformer"


def model_config(experiment, name: str, batch: int, dtype: str, settings: dict[str, int]):
  """The experiment's config (optimizer, mesh) with the benchmark's model and batch."""
  config = copy.deepcopy(experiment)
  layers = settings["layers"]
  config.model.update(
    name=name, emb_dim=settings["emb_dim"], qkv_dim=settings["emb_dim"],
    num_heads=settings["num_heads"], num_encoder_layers=layers, num_decoder_layers=layers,
    mlp_dim=settings["mlp_dim"], max_len=settings["length"], dtype=dtype,
  )  # fmt: skip
  config.data.batch_size = batch
  config.optimizer.grad_clip_norm = 1.0
  return config


def matmul_params(params: Any, cfg: Any) -> dict[str, int]:
  """Parameter counts: total, encoder, decoder (the rest), and looked-up-only embeddings."""
  flat = traverse_util.flatten_dict(nn.unbox(params))
  total = encoder = lookup = 0
  for path, x in flat.items():
    total += x.size
    encoder += x.size if path[0] == "encoder" else 0
    is_table = path[-1] == "embedding" and "posembed" not in "/".join(path)
    if (is_table and not cfg.logits_via_embedding) or "posembed" in "/".join(path):
      lookup += x.size
  return {"total": total, "encoder": encoder, "lookup": lookup}


def model_flops_per_step(name: str, counts: dict[str, int], batch: int, s: dict) -> float:
  """PaLM's model FLOPs of one train step (see the module docstring)."""
  d, layers, t = s["emb_dim"], s["layers"], s["length"]
  n = counts["total"] - counts["lookup"]
  if name == "decoder_lm":
    return batch * t * (6.0 * n + 12.0 * layers * d * t)
  # Encoder-decoder, S = T: encoder parameters see the source tokens, the rest the targets;
  # attention: encoder self, decoder self and cross, each 12 L d T per token of its side.
  dec = n - counts["encoder"]
  return batch * t * (6.0 * counts["encoder"] + 6.0 * dec + 3 * 12.0 * layers * d * t)


def _batches(name: str, batch: int, t: int, vocab: int, count: int) -> list[dict[str, Any]]:
  rng = np.random.default_rng(0)
  keys = ("inputs",) if name == "decoder_lm" else ("inputs", "targets")
  return [
    {k: rng.integers(1, vocab, (batch, t), dtype=np.int32) for k in keys} for _ in range(count)
  ]


def run(
  experiment: ml_collections.ConfigDict,
  batch: int = 8,
  vocab: int = 8192,
  dtype: str = "float32",
  steps: int = 5,
  warmup: int = 2,
  profile: bool = False,
  settings: dict[str, int] | None = None,
  name: str | None = None,
) -> dict[str, Any]:
  """Times `steps` train steps of `experiment`'s optimizer (the model and batch replaced by the
  benchmark's) after `warmup` steps; returns tokens/s, step time and MFU."""
  settings = settings or SETTINGS
  name = name or family()
  config = model_config(experiment, name, batch, dtype, settings)
  t = settings["length"]
  kind = "lm" if name == "decoder_lm" else "seq2seq"
  info = TaskInfo(kind=kind, vocab_size=vocab, max_input_length=t, max_target_length=t)
  batches = _batches(name, batch, t, vocab, steps + warmup)
  run = build.build(config, info=info, example=batches[0])
  state, mesh, step = run.state, run.mesh, run.steps.train
  with nn.logical_axis_rules(run.axis_rules):
    device_batches = [sharding.global_batch(b, mesh) for b in batches]
    executable = step.compile(state, device_batches[0])
    counts = matmul_params(state.params, run.model.config)
    times = []
    for i, b in enumerate(device_batches):
      start = time.perf_counter()
      state, _ = executable(state, b)
      jax.block_until_ready(state)
      if i >= warmup:
        times.append(time.perf_counter() - start)
    where = None
    if profile:
      from experiments.benchmarks.attention_cost import profile_ops

      holder = {"state": state}

      def one_step(b):  # the state is donated: thread it through the profiled calls
        holder["state"], metrics = executable(holder["state"], b)
        return metrics

      where = profile_ops(_Callable(executable, one_step), [(b,) for b in device_batches[:2]])
  step_s = statistics.median(times)
  tokens = batch * t * (1 if name == "decoder_lm" else 2)
  model_flops = model_flops_per_step(name, counts, batch, settings)
  peak = matmul_rate("bfloat16" if dtype == "bfloat16" else "float32")
  achieved = model_flops / step_s / 1e9
  cost = executable.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  d, layers = settings["emb_dim"], settings["layers"]
  result = {
    "model": f"{name} d={d} heads={settings['num_heads']} layers={layers} "
    f"mlp={settings['mlp_dim']} T={t} vocab={vocab}"
    + ("" if name == "decoder_lm" else f" (encoder-decoder, source = target = {t})"),
    "dtype": dtype,
    "batch": batch,
    "params": int(counts["total"]),
    "matmul_params": int(counts["total"] - counts["lookup"]),
    "step_ms": round(1e3 * step_s, 1),
    "tokens_per_sec": round(tokens / step_s, 1),
    "model_gflops_per_step": round(model_flops / 1e9, 3),
    "model_flops_per_step": int(model_flops),
    "xla_gflops_per_step": round(float(cost.get("flops", 0.0)) / 1e9, 3),
    "achieved_gflops_per_s": round(achieved, 1),
    "matmul_gflops_per_s": round(peak, 1),
    "mfu": round(achieved / peak, 3),
    "compile_s": round(step.compile_seconds, 1),
    "machine": machine(),
  }
  if where is not None:
    result["profile"] = where
  return result


class _Callable:
  """A compiled executable's HLO text with another function to call (for `profile_ops`)."""

  def __init__(self, compiled: Any, fn: Any):
    self.compiled, self.fn = compiled, fn

  def as_text(self) -> str:
    return self.compiled.as_text()

  def __call__(self, *args: Any) -> Any:
    return self.fn(*args)
