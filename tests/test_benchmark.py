"""The attention benchmark emits valid rows for every registered type; FLOPs match by hand."""

import dataclasses

import pytest

from experiments import benchmark
from models import attention

TINY = benchmark.Shape(batch=1, length=64, heads=2, head_dim=8)


def test_rows_for_every_type_and_the_references():
  names = benchmark.resolve_names(["all"])
  assert {"flax_mha", "jax_dpa"} <= set(names) and set(attention.REGISTRY) <= set(names)
  rows = benchmark.run(names, [64], TINY, repeats=2, max_temp_gib=1.0)
  assert [r["attention"] for r in rows] == names
  for r in rows:
    assert r["median_ms"] > 0 and 0 < r["min_ms"] <= r["median_ms"], r
    assert r["temp_bytes"] >= 0 and r["flops"] > 0 and r["gflops_per_s"] > 0, r
    assert r["vs_reference"] > 0, r
  assert next(r for r in rows if r["attention"] == "flax_mha")["vs_reference"] == 1.0
  assert "| scaled_dot | 64 |" in benchmark.table(rows)


def test_scaled_dot_flops_by_hand():
  b, t, h, d = 2, 128, 4, 16
  s = benchmark.Shape(b, t, h, d, mode="fwd")
  e = h * d
  projections = 4 * (2 * b * t * e * e)  # q, k, v, out: [B T E] x [E E]
  scores_and_mix = 2 * (2 * b * h * t * t * d)  # q kᵀ and w v
  assert benchmark.flops("scaled_dot", s) == projections + scores_and_mix
  assert benchmark.flops("scaled_dot", dataclasses.replace(s, mode="fwd_bwd")) == 3 * (
    projections + scores_and_mix
  )
  assert benchmark.flops("jax_dpa", s) == scores_and_mix


def test_rows_over_the_memory_budget_are_compiled_but_not_run():
  row = benchmark.measure("scaled_dot", TINY, repeats=2, max_temp_bytes=0)
  assert "median_ms" not in row and row["temp_bytes"] > 0 and "skipped" in row


def test_unknown_name_lists_the_valid_ones():
  with pytest.raises(Exception, match="valid: all, flax_mha"):
    benchmark.resolve_names(["nope"])
