"""The attention benchmark: valid rows for every registered type, FLOP formulas by hand and
against XLA, the memory/FLOP budgets, op profiles, the train step and the benchmarks doc."""

import dataclasses
import os

import jax
import pytest

from configs import default
from experiments.benchmarks import attention_cost, loop, train_step
from experiments.benchmarks import report as benchmark_report
from experiments.run import flops
from models import attention

TINY = attention_cost.Shape(batch=1, length=64, heads=2, head_dim=8)
ROW_KEYS = {
  "attention", "length", "mode", "dtype", "median_ms", "min_ms", "compile_ms", "temp_bytes",
  "flops", "gflops_per_s",
}  # fmt: skip


def test_all_is_the_references_and_every_registered_type():
  names = attention_cost.resolve_names(["all"])
  assert names[:2] == ["flax_mha", "jax_dpa"]
  assert set(names[2:]) == set(attention.REGISTRY)
  assert attention_cost.resolve_names(["linear"]) == ["flax_mha", "jax_dpa", "linear"]
  with pytest.raises(Exception, match="valid: all, flax_mha"):
    attention_cost.resolve_names(["nope"])


@pytest.mark.parametrize("name", attention_cost.resolve_names(["all"]))
def test_valid_row_for_every_type(name):
  (row,) = attention_cost.run([name], [64], TINY, repeats=2, log=None)
  assert "error" not in row and "skipped" not in row, row
  assert set(row) >= ROW_KEYS, row
  assert row["median_ms"] > 0 and 0 < row["min_ms"] <= row["median_ms"], row
  assert row["compile_ms"] > 0 and row["temp_bytes"] >= 0, row
  assert row["flops"] > 0 and row["gflops_per_s"] > 0, row


def test_references_give_the_ratios_and_the_table():
  rows = attention_cost.run(["flax_mha", "jax_dpa", "scaled_dot"], [64], TINY, 2, peak_gflops=100.0)
  by_name = {r["attention"]: r for r in rows}
  assert by_name["flax_mha"]["vs_reference"] == 1.0
  assert all(r["vs_reference"] > 0 and r["util"] > 0 for r in rows)
  assert "| scaled_dot | 64 | 1 | 2×8 | fwd_bwd |" in attention_cost.table(rows)


def test_scaled_dot_flops_by_hand():
  b, t, h, d = 2, 128, 4, 16
  s = attention_cost.Shape(b, t, h, d, mode="fwd")
  e = h * d
  projections = 4 * (2 * b * t * e * e)  # q, k, v, out: [B T E] x [E E]
  scores_and_mix = 2 * (2 * b * h * t * t * d)  # q kᵀ and w v
  assert attention_cost.flops("scaled_dot", s) == projections + scores_and_mix
  both = dataclasses.replace(s, mode="fwd_bwd")
  assert attention_cost.flops("scaled_dot", both) == 3 * (projections + scores_and_mix)
  assert attention_cost.flops("flax_mha", s) == projections + scores_and_mix
  assert attention_cost.flops("jax_dpa", s) == scores_and_mix


@pytest.mark.parametrize("name", attention_cost.resolve_names(["all"]))
def test_flop_formula_matches_the_program(name):
  """The analytic forward FLOPs agree with XLA's count of the lowered program, and, for types
  with loops (XLA counts a loop body once), with the matrix products and convolutions of the
  traced program, scan bodies counted once per iteration."""
  s = attention_cost.Shape(1, 512, 8, 64, mode="fwd")
  case = attention_cost.make_case(name, s, jax.random.key(0))
  args = (*jax.eval_shape(case.init), *jax.eval_shape(case.fresh, jax.random.key(1)))
  lowered = jax.jit(case.fn).lower(*args)
  if "stablehlo.while" in lowered.as_text():
    counted = flops.matmul_flops(jax.make_jaxpr(case.fn)(*args))
  else:
    cost = lowered.cost_analysis()
    counted = (cost[0] if isinstance(cost, list) else cost)["flops"]
  if name in attention_cost.REFERENCE_FLOPS:
    home = f"REFERENCE_FLOPS[{name!r}] in experiments/benchmarks/attention_cost.py"
  else:
    cls = attention.get(name)
    home = f"{cls.__name__}.forward_flops in {cls.__module__.replace('.', '/')}.py"
  assert attention_cost.flops(name, s) == pytest.approx(counted, rel=0.15), f"update {home}"


def test_rows_over_the_budgets_are_compiled_but_not_run():
  row = attention_cost.measure("scaled_dot", TINY, repeats=2, max_temp_bytes=0)
  assert "median_ms" not in row and row["temp_bytes"] > 0 and "temp" in row["skipped"]
  row = attention_cost.measure("scaled_dot", TINY, repeats=2, max_gflop=0.0)
  assert "median_ms" not in row and "GFLOP" in row["skipped"]
  rows = attention_cost.run(["scaled_dot"], [], TINY, memory_lengths=[128], log=None)
  assert rows[0]["length"] == 128 and rows[0]["temp_bytes"] > 0 and "median_ms" not in rows[0]
  assert "not run" in attention_cost.table(rows)


def test_a_type_that_cannot_build_gets_an_error_row(monkeypatch):
  monkeypatch.setattr(attention_cost, "type_fields", lambda name, length: {"max_length": 1})
  row = attention_cost.prepare("linformer", TINY, 1).row
  assert "error" in row and "median_ms" not in row
  assert "error" in attention_cost.table([row])


def test_scaled_dot_compiles_to_flax_mha_s_program():
  assert attention_cost.program_difference("scaled_dot", "flax_mha", TINY) == 0
  assert attention_cost.program_difference("scaled_dot", "dot", TINY) > 0  # dot does not scale q


def test_profile_sums_op_time_by_category():
  p = attention_cost.profile_case("scaled_dot", dataclasses.replace(TINY, length=128), calls=2)
  assert p["total_ms"] > 0 and p["wall_ms"] > 0
  assert "matmul" in p["categories"] and p["ops"][0]["ms"] >= p["ops"][-1]["ms"]
  assert "| matmul |" in attention_cost.profile_table(p)


def test_train_step_benchmark_reports_mfu():
  tiny = {"emb_dim": 32, "num_heads": 2, "layers": 1, "mlp_dim": 64, "length": 32}
  r = train_step.run(default.get_config(), batch=2, vocab=64, steps=1, settings=tiny)
  assert r["model"].startswith(train_step.family())
  for key in ("step_ms", "tokens_per_sec", "model_gflops_per_step", "mfu", "matmul_params"):
    assert r[key] > 0, (key, r)
  # PaLM: 6 N + 12 L d T per token (the embedding is reused for the logits, so it counts).
  tokens = 2 * 32
  expected = tokens * (6 * r["matmul_params"] + 12 * 1 * 32 * 32)
  assert r["model_flops_per_step"] == expected


def _fake_measurements() -> dict:
  def row(name, t, ms, temp, flops=1e9, **extra):
    return {
      "attention": name, "length": t, "batch": 1, "heads": 8, "head_dim": 64,
      "mode": "fwd_bwd", "dtype": "float32", "causal": False, "flops": flops,
      "compile_ms": 1.0, "temp_bytes": temp, **extra,
      **({} if ms is None else {"median_ms": ms, "min_ms": ms, "gflops_per_s": 1.0}),
    }  # fmt: skip

  mha = [
    row(n, t, 10.0, 2**20, vs_reference=1.0)
    for t in (512, 1024, 2048)
    for n in ("flax_mha", "scaled_dot")
  ]
  long = [
    row("scaled_dot", 2048, 100.0, 2**30),
    row("memory_efficient", 2048, 150.0, 2**26),
    row("scaled_dot", 4096, 400.0, 2**32, flops=1e11),
    *(row(n, 4096, 40.0, 2**27, flops=1e10) for n in benchmark_report.EFFICIENT),
    row("scaled_dot", 16384, None, 2**36, skipped="memory analysis only"),
    row("memory_efficient", 16384, None, 2**30, skipped="memory analysis only"),
  ]
  train = {"model": "decoder_lm", "mfu": 0.3, "xla_gflops_per_step": 600.0}
  train |= {"matmul_gflops_per_s": 100.0, "step_ms": 1.0}
  train["profile"] = {
    "categories": {"matmul": 70.0, "element-wise": 30.0},
    "ops": [{"op": "dot.1", "category": "matmul", "ms": 70.0, "source": "a|b"}],
    "total_ms": 100.0,
    "wall_ms": 90.0,
  }
  return {
    "machine": "test machine", "date": "2026-01-02",
    "matmul_gflops_per_s": {"float32": 100.0, "bfloat16": 50.0},
    "mha": mha, "scaled_dot_vs_flax_mha_hlo_diff": 0, "long": long, "train": train,
    "minutes": 1.0,
  }  # fmt: skip


def test_doc_states_the_targets_and_keeps_other_sections(tmp_path):
  old = "# old\n\n## Input pipeline\n\nrates\n\n## GPU\n\nH100 numbers\n\n## Stale\n\nx\n"
  (tmp_path / "benchmarks.md").write_text(old)
  benchmark_report.write_targets(docs=str(tmp_path), measured=_fake_measurements())
  doc = (tmp_path / "benchmarks.md").read_text()
  assert "Measured 2026-01-02 on test machine" in doc and "## Targets" in doc
  assert "| 1. scaled_dot fwd+bwd ≤ 1.0x flax_mha (aim 0.8x), T=2048" in doc
  assert "1/64 | **yes**" in doc  # 2a: 2^30 / 2^36
  assert "| 1.50x | **yes**" in doc  # 2b
  assert "10.0x faster, 32.0x less memory | **yes**" in doc  # 3
  assert "30% | **no**" in doc and "MFU is below 40%" in doc  # 4
  assert "## Input pipeline\n\nrates" in doc and "## GPU\n\nH100 numbers" in doc
  assert "Stale" not in doc
  assert os.path.getsize(tmp_path / "benchmarks.json") > 0


def test_all_types_doc_has_every_row_and_the_plots(tmp_path):
  measured = _fake_measurements()
  measured["sweep"] = measured.pop("long")
  benchmark_report.write_all_types(str(tmp_path), measured)
  doc = (tmp_path / "benchmarks_all_types.md").read_text()
  assert "Measured 2026-01-02 on test machine" in doc and "(benchmarks.md)" in doc
  table = [ln for ln in doc.splitlines() if ln.startswith("| ") and "fwd_bwd" in ln]
  assert len(table) == len(measured["sweep"])
  for name in ("benchmarks_all_types.json", "benchmark_time.png", "benchmark_memory.png"):
    assert os.path.getsize(tmp_path / name) > 0


def test_benchmark_writers_target_the_repositorys_docs():
  """`make bench` and `loop --write` rewrite docs/benchmarks.md (they once pointed at a
  directory that does not exist)."""
  docs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
  assert os.path.samefile(benchmark_report.DOCS, docs)
  assert os.path.samefile(loop.DOC, os.path.join(docs, "benchmarks.md"))
