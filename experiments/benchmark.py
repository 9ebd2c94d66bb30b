"""Attention cost (time, compiled memory, FLOP rate) per type and length, and a train-step MFU.

    python -m experiments.benchmark --attention=scaled_dot,memory_efficient,linear \
        --lengths=512,1024,2048 --batch=8 --heads=8 --head_dim=64 --mode=fwd_bwd --json=out.json
    python -m experiments.benchmark --attention=all --lengths=256 --mode=fwd
    python -m experiments.benchmark --train            # Transformer LM train step, MFU
    python -m experiments.benchmark --all_cpu_tables   # the measurements in docs/benchmarks.md

Every row times a jitted function of fresh random inputs (generated before timing): warm-up, then
the median and minimum of `--repeats` calls, each ended by `block_until_ready`; compile time is
measured apart. `temp_bytes` is the compiled executable's temporary memory (XLA's memory
analysis), so a shape too large to run can still be compared (`--max_temp_gib`: above it a row
is compiled but not run). References in the same run: `flax_mha`
(`flax.linen.MultiHeadDotProductAttention`, with projections, like every registered type) and
`jax_dpa` (`jax.nn.dot_product_attention` on already-projected q, k, v; on a GPU also its cuDNN
implementation, `jax_dpa_cudnn`). `vs_reference` = time / `flax_mha`'s time at the same shape.
"""

import dataclasses
import json
import statistics
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import app, flags

from experiments.device_info import machine, matmul_rate
from models import attention

FLAGS = flags.FLAGS
flags.DEFINE_list("attention", ["scaled_dot", "memory_efficient"], "Types, or 'all'.")
flags.DEFINE_list("lengths", ["512", "1024"], "Sequence lengths.")
flags.DEFINE_integer("batch", 8, "Batch size.")
flags.DEFINE_integer("heads", 8, "Heads.")
flags.DEFINE_integer("head_dim", 64, "Width per head.")
flags.DEFINE_enum("mode", "fwd_bwd", ["fwd", "fwd_bwd"], "Forward only, or forward + backward.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_bool("causal", False, "Causal self-attention.")
flags.DEFINE_integer("repeats", 10, "Timed calls per row (median reported).")
flags.DEFINE_float(
  "max_temp_gib", 16.0, "Rows whose compiled temp memory exceeds this are not run."
)
flags.DEFINE_string("json", None, "Write the rows here.")
flags.DEFINE_string("plot_prefix", None, "Write <prefix>_time.png and <prefix>_memory.png.")
flags.DEFINE_bool("train", False, "Benchmark a Transformer LM train step instead.")
flags.DEFINE_bool("all_cpu_tables", False, "Run the measurements of docs/benchmarks.md.")

REFERENCES = ("flax_mha", "jax_dpa", "jax_dpa_cudnn")  # the last only on a GPU


@dataclasses.dataclass(frozen=True)
class Shape:
  batch: int
  length: int
  heads: int
  head_dim: int
  mode: str = "fwd_bwd"
  dtype: str = "float32"
  causal: bool = False

  @property
  def width(self) -> int:
    return self.heads * self.head_dim


# ------------------------------------------------------------------------------ FLOP counts


def type_fields(name: str, length: int) -> dict:
  """Type fields needed at a given length (the rest are the type's defaults)."""
  return {
    "linformer": {"max_length": length},
    "synthesizer": {"max_length": length},
    "location": {"max_length": length},
  }.get(name, {})


def attention_core_flops(name: str, s: Shape) -> float:
  """Analytic forward FLOPs of the attention itself (2 per multiply-add), per type."""
  b, t, h, d = s.batch, s.length, s.heads, s.head_dim
  exact = 4.0 * b * h * t * t * d * (0.5 if s.causal else 1.0)  # q kᵀ and w v
  fields = {**_defaults(name), **type_fields(name, t)}
  window = fields.get("window", 0)
  table = {
    "linear": 4.0 * b * h * t * d * d,
    "performer": 4.0 * b * h * t * d * fields.get("num_features", 0)  # feature maps
    + 4.0 * b * h * t * fields.get("num_features", 0) * d,
    "linformer": 4.0 * b * h * fields.get("k", 0) * t * d  # E K, F V
    + 4.0 * b * h * t * fields.get("k", 0) * d,
    "sliding_window": 4.0 * b * h * t * min(t, 3 * max(window, 1)) * d,
    "general": exact + 2.0 * b * t * s.width * s.width,
    "additive": exact + 2.0 * b * h * t * t * d,  # tanh(W_q q + W_k k) and vᵀ
  }
  return table.get(name, exact)


def _defaults(name: str) -> dict:
  if name in REFERENCES:
    return {}
  cls = attention.get(name)
  return {
    f.name: f.default
    for f in dataclasses.fields(cls)
    if f.name in attention.own_fields(name) and f.default is not dataclasses.MISSING
  }


def flops(name: str, s: Shape) -> float:
  """Forward (+ backward = 2x forward) FLOPs, with the q/k/v/out projections except for jax_dpa."""
  projections = (
    0.0 if name.startswith("jax_dpa") else 4 * 2.0 * s.batch * s.length * s.width * s.width
  )
  forward = projections + attention_core_flops(name, s)
  return forward * (3.0 if s.mode == "fwd_bwd" else 1.0)


# ---------------------------------------------------------------------------- the functions


def _module(name: str, s: Shape) -> nn.Module:
  dtype = jnp.dtype(s.dtype)
  if name == "flax_mha":
    return nn.MultiHeadDotProductAttention(num_heads=s.heads, qkv_features=s.width, dtype=dtype)
  make = attention.build({"name": name, **type_fields(name, s.length)})
  return make(num_heads=s.heads, qkv_features=s.width, causal=s.causal, dtype=dtype)


def make_case(name: str, s: Shape, rng: jax.Array) -> tuple[Callable, tuple, Callable]:
  """-> (function, its fixed arguments, a maker of fresh inputs for each call)."""
  dtype = jnp.dtype(s.dtype)
  if name.startswith("jax_dpa"):
    implementation = "cudnn" if name == "jax_dpa_cudnn" else None
    shape = (s.batch, s.length, s.heads, s.head_dim)

    def fresh(key):
      return tuple(jax.random.normal(k, shape, dtype) for k in jax.random.split(key, 3))

    def dpa(q, k, v):
      return jax.nn.dot_product_attention(
        q, k, v, is_causal=s.causal, implementation=implementation
      )

    if s.mode == "fwd":
      return dpa, (), fresh
    return jax.grad(lambda q, k, v: dpa(q, k, v).astype(jnp.float32).sum(), (0, 1, 2)), (), fresh
  module = _module(name, s)
  x0 = jnp.zeros((s.batch, s.length, s.width), dtype)
  params = module.init({"params": rng, "attention": rng}, x0)

  def fresh(key):
    return (jax.random.normal(key, x0.shape, dtype),)

  mask = (
    nn.make_causal_mask(jnp.ones((s.batch, s.length))) if s.causal and name == "flax_mha" else None
  )

  def forward(params, x):
    return module.apply(params, x, mask=mask) if name == "flax_mha" else module.apply(params, x)

  if s.mode == "fwd":
    return forward, (params,), fresh
  loss = lambda p, x: forward(p, x).astype(jnp.float32).sum()  # noqa: E731
  return jax.grad(loss, (0, 1)), (params,), fresh


# -------------------------------------------------------------------------------- measuring


def measure(name: str, s: Shape, repeats: int, max_temp_bytes: float) -> dict:
  """One row: compile, memory analysis, then timed calls on fresh inputs."""
  rng = jax.random.key(0)
  fn, fixed, fresh = make_case(name, s, rng)
  inputs = [fresh(k) for k in jax.random.split(jax.random.key(1), repeats + 2)]
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*fixed, *inputs[0]).compile()
  compile_ms = 1e3 * (time.perf_counter() - start)
  temp = int(compiled.memory_analysis().temp_size_in_bytes)
  row = {
    "attention": name, "length": s.length, "batch": s.batch, "heads": s.heads,
    "head_dim": s.head_dim, "mode": s.mode, "dtype": s.dtype, "causal": s.causal,
    "compile_ms": round(compile_ms, 1), "temp_bytes": temp, "flops": flops(name, s),
  }  # fmt: skip
  if temp > max_temp_bytes:
    return row | {"skipped": f"temp memory {temp / 2**30:.1f} GiB > budget"}
  for args in inputs[:2]:  # warm-up
    jax.block_until_ready(compiled(*fixed, *args))
  times = []
  for args in inputs[2:]:
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*fixed, *args))
    times.append(1e3 * (time.perf_counter() - t0))
  median = statistics.median(times)
  return row | {
    "median_ms": round(median, 3),
    "min_ms": round(min(times), 3),
    "gflops_per_s": round(row["flops"] / median / 1e6, 2),
  }


def run(names, lengths, shape: Shape, repeats: int, max_temp_gib: float) -> list[dict]:
  """Rows for every type x length, references first; `vs_reference` filled from flax_mha."""
  rows = []
  for length in lengths:
    s = dataclasses.replace(shape, length=length)
    for name in names:
      rows.append(measure(name, s, repeats, max_temp_gib * 2**30))
      print(_row_line(rows[-1]), flush=True)
  add_ratios(rows)
  return rows


def add_ratios(rows: list[dict]) -> None:
  ref = {
    (r["length"], r["mode"], r["dtype"], r["batch"]): r.get("median_ms")
    for r in rows
    if r["attention"] == "flax_mha"
  }
  for r in rows:
    base = ref.get((r["length"], r["mode"], r["dtype"], r["batch"]))
    if base and r.get("median_ms"):
      r["vs_reference"] = round(r["median_ms"] / base, 3)


def references() -> list[str]:
  return [n for n in REFERENCES if n != "jax_dpa_cudnn" or jax.default_backend() == "gpu"]


def resolve_names(requested: list[str]) -> list[str]:
  """References first (always), then the requested registered types."""
  if requested == ["all"]:
    return [*references(), *sorted(attention.REGISTRY)]
  unknown = [n for n in requested if n not in REFERENCES and n not in attention.REGISTRY]
  if unknown:
    valid = ", ".join([*references(), *sorted(attention.REGISTRY)])
    raise app.UsageError(f"unknown attention {unknown}; valid: all, {valid}")
  return [*references(), *(n for n in requested if n not in REFERENCES)]


# ------------------------------------------------------------------------------- reporting


def _row_line(r: dict) -> str:
  if "median_ms" not in r:
    return (
      f"{r['attention']:>18} T={r['length']:<6} temp {_mib(r['temp_bytes'])} MiB  ({r['skipped']})"
    )
  return (
    f"{r['attention']:>18} T={r['length']:<6} {r['median_ms']:10.2f} ms  "
    f"temp {_mib(r['temp_bytes'])} MiB  {r['gflops_per_s']:8.1f} GFLOP/s"
  )


def _mib(n: int) -> str:
  return f"{n / 2**20:,.1f}"


def table(rows: list[dict]) -> str:
  """Markdown table of rows."""
  lines = [
    "| attention | T | B | mode | dtype | median ms | min ms | compile ms | temp MiB | GFLOP/s "
    "| vs flax_mha |",
    "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    ran = "median_ms" in r
    cells = [
      r["attention"], r["length"], r["batch"], r["mode"], r["dtype"],
      f"{r['median_ms']:.2f}" if ran else "not run", f"{r['min_ms']:.2f}" if ran else "",
      f"{r['compile_ms']:.0f}", _mib(r["temp_bytes"]),
      f"{r['gflops_per_s']:.1f}" if ran else "",
      f"{r['vs_reference']:.2f}x" if "vs_reference" in r else "",
    ]  # fmt: skip
    lines.append("| " + " | ".join(str(c) for c in cells) + " |")
  return "\n".join(lines)


def plot(rows: list[dict], prefix: str) -> list[str]:
  """Log-log time and memory against length, one line per type."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  paths = []
  for key, label, name in (
    ("median_ms", "median time per call (ms)", "time"),
    ("temp_bytes", "compiled temporary memory (MiB)", "memory"),
  ):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for att in dict.fromkeys(r["attention"] for r in rows):
      pts = sorted((r["length"], r[key]) for r in rows if r["attention"] == att and key in r)
      if pts:
        xs, ys = zip(*pts, strict=True)
        ys = [y / 2**20 for y in ys] if key == "temp_bytes" else ys
        ax.plot(xs, ys, marker="o", label=att, linestyle="--" if att in REFERENCES else "-")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T (tokens)")
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    path = f"{prefix}_{name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(path)
  return paths


def main(argv) -> None:
  del argv
  if FLAGS.all_cpu_tables:
    from experiments import benchmark_report

    benchmark_report.write_all()
    return
  if FLAGS.train:
    from experiments import benchmark_train

    print(json.dumps(benchmark_train.run(), indent=2))
    return
  shape = Shape(FLAGS.batch, 0, FLAGS.heads, FLAGS.head_dim, FLAGS.mode, FLAGS.dtype, FLAGS.causal)
  print(f"{machine()}; matmul {matmul_rate(FLAGS.dtype):.1f} GFLOP/s ({FLAGS.dtype})")
  names = resolve_names(FLAGS.attention)
  rows = run(names, [int(t) for t in FLAGS.lengths], shape, FLAGS.repeats, FLAGS.max_temp_gib)
  print(table(rows))
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(rows, f, indent=1)
  if FLAGS.plot_prefix:
    plot(rows, FLAGS.plot_prefix)


if __name__ == "__main__":
  app.run(main)
