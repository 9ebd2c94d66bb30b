"""Attention cost (time, compiled memory, FLOP rate) per type and length (`python -m
experiments.benchmarks --help`).

Method. At each length every requested type is built (type fields that depend on the length come
from `type_fields`: the type's `length_fields`), jitted and compiled ahead of time (`compile_ms`,
not part of the timings), and its compiled temporary memory read from XLA's memory analysis
(`temp_bytes`). Fresh random inputs for every call are generated before any timing. The types are
then timed interleaved (round r calls every type once, in an order rotated each round), so load from
other processes on the machine falls on all of them alike: `--warmup` untimed rounds, then
`--repeats` timed rounds, each call ended by `block_until_ready`; rows report the median and
minimum.

Rows whose compiled temporary memory exceeds `--max_temp_gib`, or whose analytic FLOPs exceed
`--max_gflop`, are compiled but not run (`skipped` says why), so e.g. `scaled_dot` at T=16384 can
be compared with `memory_efficient` by memory analysis alone; `--memory_lengths` adds lengths
that are only compiled. A type that cannot be built at a shape gets a row with `error`.

References in the same run: `flax_mha` (`flax.linen.MultiHeadDotProductAttention`, with the
q/k/v/out projections like every registered type) and `jax_dpa` (`jax.nn.dot_product_attention`
on already-projected q, k, v); on a GPU with 16-bit inputs also `jax_dpa_cudnn` (its cuDNN
kernel). `vs_reference` = median time / `flax_mha`'s median at the same shape.

FLOPs are analytic (each type's `forward_flops` in its file under `models/attention/`, the
references' in `REFERENCE_FLOPS`; projections included; forward + backward = 3x forward), so
`gflops_per_s` compares types by useful work, and `util` divides it by the device's measured
matmul rate (`device_info.matmul_rate`).
"""

import collections
import dataclasses
import glob
import gzip
import json
import math
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import attention
from models.attention import cost

REFERENCES = ("flax_mha", "jax_dpa", "jax_dpa_cudnn")


@dataclasses.dataclass(frozen=True)
class Shape:
  """One benchmark shape: inputs `[batch, length, heads * head_dim]` (what the types'
  `forward_flops` read, `models.attention.cost.CallShape`, plus the mode and dtype)."""

  batch: int
  length: int
  heads: int
  head_dim: int
  mode: str = "fwd_bwd"  # fwd | fwd_bwd
  dtype: str = "float32"
  causal: bool = False

  @property
  def width(self) -> int:
    return self.heads * self.head_dim


# ------------------------------------------------------------------------------ type fields


def type_fields(name: str, length: int) -> dict[str, Any]:
  """Type fields a type needs at a given length (its `length_fields`; the others keep the
  type's defaults)."""
  if name not in attention.REGISTRY:
    return {}
  return dict.fromkeys(attention.get(name).length_fields, length)


def fields_of(name: str, length: int) -> dict[str, Any]:
  """The type's defaults updated by `type_fields`: what a FLOP formula reads."""
  if name not in attention.REGISTRY:
    return {}
  defaults = {
    f.name: f.default
    for f in dataclasses.fields(attention.get(name))
    if f.name in attention.own_fields(name) and f.default is not dataclasses.MISSING
  }
  return defaults | type_fields(name, length)


# ------------------------------------------------------------------------------ FLOP counts
# A registered type's forward FLOPs are its own `forward_flops` (models/attention/cost.py says
# what is counted); the references that are not registered types have theirs here.

REFERENCE_FLOPS: dict[str, Callable[[Shape], float]] = {
  "flax_mha": lambda s: attention.Attention.forward_flops(s, {}),  # the dense default
  "jax_dpa": lambda s: cost.dense(s),  # q, k, v come projected
  "jax_dpa_cudnn": lambda s: cost.dense(s),
}


def forward_flops(name: str, s: Shape) -> float:
  """Analytic FLOPs of one forward call, projections included."""
  if name in REFERENCE_FLOPS:
    return REFERENCE_FLOPS[name](s)
  return attention.get(name).forward_flops(s, fields_of(name, s.length))


def flops(name: str, s: Shape) -> float:
  """Analytic FLOPs of one call: forward, or forward + backward (3x forward)."""
  return forward_flops(name, s) * (3.0 if s.mode == "fwd_bwd" else 1.0)


def flops_formula(name: str) -> str:
  """Which formula a row's FLOPs come from: the name, or `dense default` for a registered type
  that keeps `Attention.forward_flops`."""
  if name in REFERENCE_FLOPS:
    return name
  own = attention.get(name).forward_flops.__func__ is not attention.Attention.forward_flops.__func__
  return name if own else "dense default"


# ---------------------------------------------------------------------------- the functions


@dataclasses.dataclass
class Case:
  """A function to time: `fn(*fixed, *fresh(key))`; `fixed` made by `init()`."""

  fn: Callable
  init: Callable[[], tuple]
  fresh: Callable[[jax.Array], tuple]


def _module(name: str, s: Shape) -> nn.Module:
  dtype = jnp.dtype(s.dtype)
  if name == "flax_mha":
    return nn.MultiHeadDotProductAttention(num_heads=s.heads, qkv_features=s.width, dtype=dtype)
  make = attention.build({"name": name, **type_fields(name, s.length)})
  return make(num_heads=s.heads, qkv_features=s.width, causal=s.causal, dtype=dtype)


def make_case(name: str, s: Shape, rng: jax.Array) -> Case:
  """The function of a type at a shape: forward, or the gradient of sum(output) with respect to
  the parameters and the inputs (fwd_bwd)."""
  dtype = jnp.dtype(s.dtype)
  if name.startswith("jax_dpa"):
    implementation = "cudnn" if name == "jax_dpa_cudnn" else None
    shape = (s.batch, s.length, s.heads, s.head_dim)

    def fresh_qkv(key):
      return tuple(jax.random.normal(k, shape, dtype) for k in jax.random.split(key, 3))

    def dpa(q, k, v):
      return jax.nn.dot_product_attention(
        q, k, v, is_causal=s.causal, implementation=implementation
      )

    if s.mode == "fwd":
      return Case(dpa, tuple, fresh_qkv)
    grad = jax.grad(lambda q, k, v: dpa(q, k, v).astype(jnp.float32).sum(), (0, 1, 2))
    return Case(grad, tuple, fresh_qkv)

  module = _module(name, s)
  x_shape = (s.batch, s.length, s.width)
  mask = None
  if s.causal and name == "flax_mha":
    mask = nn.make_causal_mask(jnp.ones((s.batch, s.length)))

  def init():
    x0 = jnp.zeros(x_shape, dtype)
    variables = jax.jit(module.init)({"params": rng, "attention": rng}, x0)
    params = variables.pop("params")
    return params, variables  # parameters, other collections (e.g. fixed features)

  def fresh(key):
    return (jax.random.normal(key, x_shape, dtype),)

  def forward(params, others, x):
    return module.apply({"params": params, **others}, x, mask=mask)

  if s.mode == "fwd":
    return Case(forward, init, fresh)

  def loss(params, others, x):
    return forward(params, others, x).astype(jnp.float32).sum()

  return Case(jax.grad(loss, (0, 2)), init, fresh)


# -------------------------------------------------------------------------------- measuring


@dataclasses.dataclass
class Prepared:
  """A compiled case with its inputs, ready to be timed (`inputs` is None if not to be run)."""

  row: dict[str, Any]
  compiled: Any = None
  fixed: tuple = ()
  inputs: list[tuple] | None = None
  times: list[float] = dataclasses.field(default_factory=list)


def _base_row(name: str, s: Shape) -> dict[str, Any]:
  return {
    "attention": name, "length": s.length, "batch": s.batch, "heads": s.heads,
    "head_dim": s.head_dim, "mode": s.mode, "dtype": s.dtype, "causal": s.causal,
    "flops": flops(name, s), "flops_formula": flops_formula(name),
  }  # fmt: skip


def prepare(
  name: str,
  s: Shape,
  calls: int,
  max_temp_bytes: float = math.inf,
  max_gflop: float = math.inf,
  run: bool = True,
) -> Prepared:
  """Compiles one type at one shape (timing the compilation), reads its memory analysis, and
  generates `calls` fresh inputs when it is to be run within the budgets."""
  row = _base_row(name, s)
  try:
    case = make_case(name, s, jax.random.key(0))
    fixed_shapes = jax.eval_shape(case.init)
    example = jax.eval_shape(case.fresh, jax.random.key(1))
    start = time.perf_counter()
    compiled = jax.jit(case.fn).lower(*fixed_shapes, *example).compile()
    row["compile_ms"] = round(1e3 * (time.perf_counter() - start), 1)
  except Exception as e:  # noqa: BLE001 - a type that cannot run at this shape is reported
    return Prepared(row | {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
  analysis = compiled.memory_analysis()
  row["temp_bytes"] = int(analysis.temp_size_in_bytes) if analysis is not None else -1
  if not run:
    return Prepared(row | {"skipped": "memory analysis only"})
  if row["temp_bytes"] > max_temp_bytes:
    return Prepared(row | {"skipped": f"temp {row['temp_bytes'] / 2**30:.1f} GiB > budget"})
  if row["flops"] > max_gflop * 1e9:
    return Prepared(row | {"skipped": f"{row['flops'] / 1e9:,.0f} GFLOP > budget"})
  keys = jax.random.split(jax.random.key(1), calls)
  inputs = [jax.block_until_ready(case.fresh(k)) for k in keys]
  return Prepared(row, compiled, jax.block_until_ready(case.init()), inputs)


def time_interleaved(
  cases: Sequence[Prepared],
  warmup: int,
  repeats: int,
  max_call_s: float = math.inf,
  exempt: Sequence[str] = (),
) -> None:
  """Rounds of one call per case (order rotated each round); fills `times` (ms) after warm-up.

  A case (not in `exempt`) whose first warm-up call took over `max_call_s` is not timed
  further: its row says so (`skipped`, `warmup_ms`), keeping a run's duration bounded.
  """
  live = [c for c in cases if c.inputs is not None]
  for r in range(warmup + repeats):
    shift = r % max(len(live), 1)
    for c in live[shift:] + live[:shift]:
      args = (*c.fixed, *c.inputs[r])
      start = time.perf_counter()
      jax.block_until_ready(c.compiled(*args))
      elapsed = time.perf_counter() - start
      if r >= warmup:
        c.times.append(1e3 * elapsed)
      elif r == 0 and elapsed > max_call_s and c.row["attention"] not in exempt:
        c.row |= {"warmup_ms": round(1e3 * elapsed, 1), "skipped": "slow: first call > budget"}
        c.inputs = None
    live = [c for c in live if c.inputs is not None]
  for c in live:
    median = statistics.median(c.times)
    c.row |= {
      "median_ms": round(median, 3),
      "min_ms": round(min(c.times), 3),
      "gflops_per_s": round(c.row["flops"] / median / 1e6, 2),
    }
    c.inputs = None  # free them


def measure(
  name: str,
  s: Shape,
  repeats: int = 10,
  max_temp_bytes: float = math.inf,
  warmup: int = 1,
  max_gflop: float = math.inf,
) -> dict[str, Any]:
  """One row on its own (not interleaved with others)."""
  p = prepare(name, s, warmup + repeats, max_temp_bytes, max_gflop)
  time_interleaved([p], warmup, repeats)
  return p.row


def run(
  names: Sequence[str],
  lengths: Sequence[int],
  shape: Shape,
  repeats: int = 10,
  max_temp_gib: float = 16.0,
  *,
  warmup: int = 1,
  max_gflop: float = math.inf,
  max_call_s: float = math.inf,
  exempt: Sequence[str] = (),
  memory_lengths: Sequence[int] = (),
  peak_gflops: float | None = None,
  log: Callable[[str], None] | None = print,
) -> list[dict[str, Any]]:
  """Rows for every name x length (timed interleaved per length), then compile-only rows at
  `memory_lengths`; fills `vs_reference` (from flax_mha) and `util` (over `peak_gflops`).
  Budgets: `max_temp_gib`, `max_gflop` (compiled, not run) and `max_call_s` (see
  `time_interleaved`; `exempt` names are always timed)."""
  rows = []
  for length in lengths:
    s = dataclasses.replace(shape, length=length)
    cases = []
    for name in names:
      cases.append(prepare(name, s, warmup + repeats, max_temp_gib * 2**30, max_gflop))
    time_interleaved(cases, warmup, repeats, max_call_s, exempt)
    rows += [c.row for c in cases]
    del cases
    if log:
      for r in rows[-len(names) :]:
        log(row_line(r))
  for length in memory_lengths:
    s = dataclasses.replace(shape, length=length)
    for name in names:
      rows.append(prepare(name, s, 0, run=False).row)
      if log:
        log(row_line(rows[-1]))
  add_ratios(rows, peak_gflops)
  return rows


def add_ratios(rows: list[dict[str, Any]], peak_gflops: float | None = None) -> None:
  """`vs_reference` = time / flax_mha's time at the same shape; `util` = GFLOP/s / peak."""

  def key(r):
    return tuple(r[k] for k in ("length", "batch", "heads", "head_dim", "mode", "dtype", "causal"))

  ref = {key(r): r["median_ms"] for r in rows if r["attention"] == "flax_mha" and "median_ms" in r}
  for r in rows:
    if key(r) in ref and "median_ms" in r:
      r["vs_reference"] = round(r["median_ms"] / ref[key(r)], 3)
    if peak_gflops and "gflops_per_s" in r:
      r["util"] = round(r["gflops_per_s"] / peak_gflops, 3)


def references(dtype: str = "float32") -> list[str]:
  """flax_mha, jax_dpa, and jax_dpa_cudnn where cuDNN applies (GPU, 16-bit inputs)."""
  names = ["flax_mha", "jax_dpa"]
  if jax.default_backend() == "gpu" and dtype in ("bfloat16", "float16"):
    names.append("jax_dpa_cudnn")
  return names


def resolve_names(requested: Sequence[str], dtype: str = "float32") -> list[str]:
  """References first (always), then the requested registered types ('all': every one)."""
  if list(requested) == ["all"]:
    return [*references(dtype), *sorted(attention.REGISTRY)]
  unknown = [n for n in requested if n not in REFERENCES and n not in attention.REGISTRY]
  if unknown:
    valid = ", ".join([*references(dtype), *sorted(attention.REGISTRY)])
    raise ValueError(f"unknown attention {unknown}; valid: all, {valid}")
  return [*references(dtype), *(n for n in requested if n not in REFERENCES)]


# ---------------------------------------------------------------------------- op profiles


def _hlo_index(hlo_text: str) -> tuple[dict[str, tuple[str, str | None, str]], dict]:
  """Compiled HLO text -> {instruction: (opcode, called computation, op_name)} and
  {computation: opcodes}."""
  instructions, computations, current = {}, collections.defaultdict(set), None
  header = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
  line_re = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?\s([a-z][\w\-]*)\(")
  for line in hlo_text.splitlines():
    if current is None or line.startswith(("%", "ENTRY")):
      m = header.match(line)
      if m:
        current = m.group(1)
        continue
    m = line_re.match(line)
    if m and current is not None:
      called = re.search(r"(?:calls|body)=%([\w.\-]+)", line)
      op_name = re.search(r'op_name="([^"]*)"', line)
      instructions[m.group(1)] = (
        m.group(2),
        called.group(1) if called else None,
        op_name.group(1) if op_name else "",
      )
      computations[current].add(m.group(2))
  return instructions, computations


MOVES = {"copy", "transpose", "bitcast", "broadcast", "reshape", "parameter", "constant", "slice"}
MOVES |= {"concatenate", "pad", "dynamic-slice", "dynamic-update-slice", "tuple", "iota"}
MOVES |= {"get-tuple-element", "convert"}


def op_category(opcode: str, opcodes: set[str]) -> str:
  """matmul | data movement | reduction | element-wise | control, from an op's HLO opcodes."""
  ops = opcodes | {opcode}
  if ops & {"dot", "convolution"}:
    return "matmul"
  if ops & {"while", "conditional", "call"} and opcode != "fusion":
    return "control"
  if ops <= MOVES | {"fusion"}:
    return "data movement"
  if ops & {"reduce", "reduce-window", "scatter", "sort"}:
    return "reduction"
  return "element-wise"


def profile_ops(compiled: Any, args: Sequence[tuple], top: int = 15) -> dict[str, Any]:
  """Where the time of a compiled function goes: runs it on each of `args` under
  `jax.profiler` and sums the executed HLO ops' durations by op and category.

  Returns {"categories": {category: ms per call}, "ops": [top ops: name, category, ms, source],
  "total_ms": summed op time per call, "wall_ms": median wall time per call}.
  """
  instructions, computations = _hlo_index(compiled.as_text())
  jax.block_until_ready(compiled(*args[0]))
  walls = []
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      for a in args:
        start = time.perf_counter()
        jax.block_until_ready(compiled(*a))
        walls.append(1e3 * (time.perf_counter() - start))
    paths = glob.glob(os.path.join(tmp, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(paths[0]) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  per_op = collections.Counter()
  for e in events:
    op = e.get("args", {}).get("hlo_op") if e.get("ph") == "X" else None
    if op:
      per_op[op] += e.get("dur", 0.0) / 1e3 / len(args)  # µs -> ms per call
  categories, ops = collections.Counter(), []
  for op, ms in per_op.most_common():
    opcode, called, source = instructions.get(op, ("?", None, ""))
    category = op_category(opcode, computations.get(called, set()))
    if category == "control":  # a loop's time is the sum of its body's ops, counted there
      continue
    categories[category] += ms
    ops.append({"op": op, "category": category, "ms": round(ms, 2), "source": source[-90:]})
  return {
    "categories": {k: round(v, 2) for k, v in categories.most_common()},
    "ops": ops[:top],
    "total_ms": round(sum(categories.values()), 2),
    "wall_ms": round(statistics.median(walls), 2),
  }


def profile_table(profile: dict[str, Any]) -> str:
  """Markdown: time per op category, then the top ops."""
  total = max(profile["total_ms"], 1e-9)
  lines = ["| op category | ms per call | share |", "|---|---:|---:|"]
  for k, v in profile["categories"].items():
    lines.append(f"| {k} | {v:,.1f} | {100 * v / total:.0f}% |")
  lines += ["", "| op | category | ms | from |", "|---|---|---:|---|"]
  for o in profile["ops"]:
    source = o["source"].replace("|", "/")
    lines.append(f"| {o['op']} | {o['category']} | {o['ms']:,.1f} | `{source}` |")
  return "\n".join(lines)


def profile_case(name: str, s: Shape, calls: int = 3) -> dict[str, Any]:
  """`profile_ops` of one type at one shape."""
  p = prepare(name, s, calls)
  if p.inputs is None:
    raise ValueError(f"{name} at {s}: {p.row.get('error') or p.row.get('skipped')}")
  return profile_ops(p.compiled, [(*p.fixed, *x) for x in p.inputs])


def program_lines(compiled: Any) -> collections.Counter:
  """A compiled program's instructions with names and metadata removed (a multiset), so two
  programs that differ only in naming compare equal."""
  lines = collections.Counter()
  for line in compiled.as_text().splitlines():
    if " = " not in line or not line.startswith("  "):
      continue
    line = re.sub(r", metadata=\{[^}]*\}", "", line)
    line = re.sub(r"%[\w.\-]+", "%_", line)
    lines[re.sub(r"stack_frame_id=\d+", "", line).strip()] += 1
  return lines


def program_difference(a: str, b: str, s: Shape) -> int:
  """How many compiled instructions differ between types `a` and `b` at shape `s` (0: the same
  program up to names)."""
  programs = []
  for name in (a, b):
    case = make_case(name, s, jax.random.key(0))
    args = (*jax.eval_shape(case.init), *jax.eval_shape(case.fresh, jax.random.key(1)))
    programs.append(program_lines(jax.jit(case.fn).lower(*args).compile()))
  return sum(((programs[0] - programs[1]) + (programs[1] - programs[0])).values())


# ------------------------------------------------------------------------------- reporting


def _mib(n: int) -> str:
  return f"{n / 2**20:,.1f}"


def row_line(r: dict[str, Any]) -> str:
  """One console line per row."""
  head = f"{r['attention']:>18} T={r['length']:<6}"
  if "error" in r:
    return f"{head} error: {r['error']}"
  mem = f"temp {_mib(r['temp_bytes'])} MiB"
  if "median_ms" not in r:
    return f"{head} {'not run':>13}  {mem}  ({r['skipped']})"
  return f"{head} {r['median_ms']:10.2f} ms  {mem}  {r['gflops_per_s']:8.1f} GFLOP/s"


def table(rows: Sequence[dict[str, Any]]) -> str:
  """Markdown table of rows."""
  lines = [
    "| attention | T | B | H×D | mode | dtype | median ms | min ms | compile ms | temp MiB "
    "| GFLOP | GFLOP/s | util | vs flax_mha |",
    "|---|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    ran = "median_ms" in r
    status = "error" if "error" in r else ("not run" if not ran else "")
    cells = [
      r["attention"], r["length"], r["batch"], f"{r['heads']}×{r['head_dim']}", r["mode"],
      r["dtype"], f"{r['median_ms']:,.2f}" if ran else status,
      f"{r['min_ms']:,.2f}" if ran else "",
      f"{r['compile_ms']:,.0f}" if "compile_ms" in r else "",
      _mib(r["temp_bytes"]) if "temp_bytes" in r else "",
      f"{r['flops'] / 1e9:,.2f}", f"{r['gflops_per_s']:,.1f}" if ran else "",
      f"{100 * r['util']:.0f}%" if "util" in r else "",
      f"{r['vs_reference']:.2f}x" if "vs_reference" in r else "",
    ]  # fmt: skip
    lines.append("| " + " | ".join(str(c) for c in cells) + " |")
  return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], prefix: str, title: str = "") -> list[str]:
  """Log-log time and temporary memory against length, one line per type; writes
  `<prefix>_time.png` and `<prefix>_memory.png`."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(dict.fromkeys(r["attention"] for r in rows))
  cmap = plt.get_cmap("tab20")
  styles = {
    n: (cmap(i % 20), ("o", "s", "^", "D", "v", "P", "X")[i % 7]) for i, n in enumerate(names)
  }
  paths = []
  for key, label, suffix in (
    ("median_ms", "median time per call (ms)", "time"),
    ("temp_bytes", "compiled temporary memory (MiB)", "memory"),
  ):
    fig, ax = plt.subplots(figsize=(9, 5))
    for name in names:
      pts = sorted(
        (r["length"], r[key]) for r in rows if r["attention"] == name and r.get(key, -1) > 0
      )
      if not pts:
        continue
      xs, ys = zip(*pts, strict=True)
      ys = [y / 2**20 for y in ys] if key == "temp_bytes" else ys
      color, marker = styles[name]
      dashed = "--" if name in REFERENCES else "-"
      ax.plot(xs, ys, marker=marker, color=color, label=name, linestyle=dashed, markersize=4)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    lengths = sorted({r["length"] for r in rows if r.get(key, -1) > 0})
    ax.set_xticks(lengths, [str(t) for t in lengths])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("sequence length T (tokens)")
    ax.set_ylabel(label)
    ax.set_title(f"{title} — {suffix}" if title else suffix, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    path = f"{prefix}_{suffix}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
  return paths
