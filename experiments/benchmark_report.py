"""`make bench`: the CPU measurements behind docs/benchmarks.md, rewritten with date and machine.

Targets (see the performance issue): 1. scaled_dot vs flax_mha fwd+bwd at T=512..2048;
2. memory_efficient at T=16384 (temp memory vs scaled_dot's) and its time at T=2048;
3. linear / performer / linformer / sliding_window vs scaled_dot at T=4096; 4. train-step MFU.
A section `## Input pipeline` already in the file is kept as it is.
"""

import dataclasses
import datetime
import json
import os
import re

from experiments import benchmark, benchmark_train
from experiments.device_info import machine, matmul_rate
from models import attention

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
EFFICIENT = ("linear", "performer", "linformer", "sliding_window")


def _registered(names):
  return [n for n in names if n in attention.REGISTRY]


def _row(rows, name, length):
  return next(r for r in rows if r["attention"] == name and r["length"] == length)


def _yes(ok: bool) -> str:
  return "yes" if ok else "no"


def measure_all() -> dict:
  mha = benchmark.Shape(8, 0, 8, 64)
  one = benchmark.Shape(1, 0, 8, 64)
  out = {"machine": machine(), "matmul_gflops_per_s": round(matmul_rate("float32"), 1)}
  out["mha"] = benchmark.run(["flax_mha", "jax_dpa", "scaled_dot"], [512, 1024, 2048], mha, 10, 16)
  out["memory_efficient_2048"] = benchmark.run(
    ["flax_mha", "jax_dpa", "scaled_dot", "memory_efficient"], [2048], one, 10, 16
  )
  long = dataclasses.replace(one, length=16384)
  out["memory_efficient_16384"] = [
    benchmark.measure("scaled_dot", long, 1, 4 * 2**30),  # compiled for its memory only
    benchmark.measure("memory_efficient", long, 3, 16 * 2**30),
  ]
  out["efficient_4096"] = benchmark.run(
    ["flax_mha", "scaled_dot", *_registered(EFFICIENT)], [4096], one, 10, 16
  )
  small = benchmark.Shape(1, 0, 4, 32)
  out["all"] = benchmark.run(benchmark.resolve_names(["all"]), [256, 512, 1024], small, 5, 8)
  out["train"] = benchmark_train.run()
  return out


def render(m: dict) -> str:
  today = datetime.date.today().isoformat()
  mha = m["mha"]
  lines = [
    "# Benchmarks",
    "",
    f"Measured {today} on {m['machine']} by `make bench` "
    f"(`python -m experiments.benchmark --all_cpu_tables`); matmul rate of this device: "
    f"{m['matmul_gflops_per_s']} GFLOP/s (float32, 2048², median of 10). Every row is the median "
    "of timed calls on fresh inputs after warm-up, compile time excluded; `temp MiB` is XLA's "
    "compiled temporary memory. Raw rows: `docs/benchmarks.json`.",
    "",
    "## Targets",
    "",
    "| target | measured | met |",
    "|---|---|---|",
  ]
  for t in (512, 1024, 2048):
    r = _row(mha, "scaled_dot", t)["vs_reference"]
    lines.append(
      f"| 1. scaled_dot fwd+bwd ≤ 1.0x flax_mha (aim 0.8x), T={t}, B=8 H=8 D=64 | {r:.2f}x | "
      f"{'yes' if r <= 1.0 else 'no'} |"
    )
  sd16, me16 = m["memory_efficient_16384"]
  frac = me16["temp_bytes"] / sd16["temp_bytes"]
  ran = "median_ms" in me16
  run_note = f"ran in {me16['median_ms'] / 1e3:.1f} s per step" if ran else "not run"
  lines.append(
    f"| 2a. memory_efficient fwd+bwd T=16384 (B=1 H=8 D=64) temp ≤ 1/16 of scaled_dot's | "
    f"{me16['temp_bytes'] / 2**20:,.0f} MiB vs {sd16['temp_bytes'] / 2**20:,.0f} MiB "
    f"= 1/{1 / frac:.0f}; {run_note} | {_yes(frac <= 1 / 16 and ran)} |"
  )
  me, sd = (_row(m["memory_efficient_2048"], n, 2048) for n in ("memory_efficient", "scaled_dot"))
  ratio = me["median_ms"] / sd["median_ms"]
  lines.append(
    f"| 2b. memory_efficient within 2x of scaled_dot at T=2048 | {ratio:.2f}x | "
    f"{'yes' if ratio <= 2 else 'no'} |"
  )
  sd4 = _row(m["efficient_4096"], "scaled_dot", 4096)
  for name in _registered(EFFICIENT):
    r = _row(m["efficient_4096"], name, 4096)
    speed, mem = sd4["median_ms"] / r["median_ms"], sd4["temp_bytes"] / max(r["temp_bytes"], 1)
    lines.append(
      f"| 3. {name} T=4096 ≥ 6x faster, ≥ 8x less temp memory than scaled_dot | "
      f"{speed:.1f}x faster, {mem:.1f}x less memory | {_yes(speed >= 6 and mem >= 8)} |"
    )
  tr = m["train"]
  lines.append(
    f"| 4. train step ≥ 40% MFU (CPU) | {100 * tr['mfu']:.0f}% | {_yes(tr['mfu'] >= 0.4)} |"
  )
  sections = [
    ("Multi-head attention with projections, fwd+bwd, float32 (target 1)", mha),
    ("Memory-efficient attention at T=2048, fwd+bwd (target 2b)", m["memory_efficient_2048"]),
    ("T=16384, fwd+bwd: memory analysis (target 2a)", m["memory_efficient_16384"]),
    ("Long-range types at T=4096, B=1 H=8 D=64, fwd+bwd (target 3)", m["efficient_4096"]),
    ("Every registered type, B=1 H=4 D=32, fwd+bwd", m["all"]),
  ]
  for title, rows in sections:
    lines += ["", f"## {title}", "", benchmark.table(rows)]
  lines += [
    "",
    "![time](benchmark_time.png) ![memory](benchmark_memory.png)",
    "",
    "## Train step (target 4)",
    "",
    "| " + " | ".join(tr) + " |",
    "|" + "---|" * len(tr),
    "| " + " | ".join(str(v) for v in tr.values()) + " |",
  ]
  return "\n".join(lines) + "\n"


def write_all() -> None:
  measured = measure_all()
  path = os.path.join(DOC, "benchmarks.md")
  kept = ""
  if os.path.exists(path):
    with open(path) as f:
      old = f.read()
    kept = "".join(
      m.group(0)
      for m in re.finditer(r"^## (Input pipeline|GPU)[^\n]*\n.*?(?=^## |\Z)", old, re.S | re.M)
    )
  with open(path, "w") as f:
    f.write(render(measured) + ("\n" + kept if kept else ""))
  with open(os.path.join(DOC, "benchmarks.json"), "w") as f:
    json.dump(measured, f, indent=1)
  benchmark.plot(measured["all"], os.path.join(DOC, "benchmark"))
  print(f"wrote {path}")
