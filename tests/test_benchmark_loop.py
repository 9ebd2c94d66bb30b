"""The loop benchmark: its measurements run on a tiny config, and its section replaces itself."""

from experiments.benchmarks import loop
from tests.helpers import tiny_config

MEASURED = {
  "machine": "test machine",
  "date": "2026-12-03",
  "steps": 100,
  "loop": [30.0, 32.0, 31.0],
  "minimal": [29.0, 30.0, 31.0],
  "bare": [33.0, 33.0, 34.0],
  "idle": {"gap_ms": 0.5, "step_ms": 30.0, "idle_share": 0.02},
  "checkpoint": {"pause_s": 0.05, "complete_s": 0.4, "state_mib": 1.9},
  "command": "python -m experiments.benchmarks.loop",
}


def test_section_is_inserted_before_gpu_then_replaced(tmp_path):
  doc = tmp_path / "benchmarks.md"
  doc.write_text("# Benchmarks\n\n## Train step\n\nold\n\n## GPU\n\nnone\n")
  loop.write(MEASURED, str(doc))
  text = doc.read_text()
  assert text.index("## Training loop") < text.index("## GPU")
  assert "| 31.0 | 1.03x | 1.06x |" in text  # medians 31 / 30; bare 33 / 31
  assert "median\n0.50 ms per step of 30.00 ms, 2.0%" in text
  assert "holds the loop\n50 ms" in text or "holds the loop 50 ms" in text.replace("\n", " ")
  loop.write({**MEASURED, "loop": [15.0, 15.0, 15.0]}, str(doc))
  text = doc.read_text()
  assert text.count("## Training loop") == 1 and "| 15.0 | 0.50x | 2.20x |" in text
  assert text.endswith("## GPU\n\nnone\n") and "## Train step\n\nold" in text


def test_measurements_run_on_a_tiny_config():
  config = tiny_config(steps=10)
  assert loop.loop_rate(config, 10) > 0
  assert loop.minimal_rate(config, 10) > 0
  assert loop.bare_rate(config, 10) > 0
  idle = loop.idle_gap(config, 20, count=4)
  assert 0 <= idle["gap_ms"] < idle["step_ms"] and 0 <= idle["idle_share"] < 1
  pause = loop.checkpoint_pause(config, saves=2)
  assert 0 < pause["pause_s"] <= pause["complete_s"] and pause["state_mib"] > 0
