"""Eval by decoding: BLEU of beam-search output becomes an eval metric and the main one."""

import numpy as np

from experiments.run import decode_eval, train
from tests.helpers import tiny_config


def test_strip_stops_at_eos_and_drops_padding():
  np.testing.assert_array_equal(decode_eval._strip(np.array([5, 6, 1, 7, 0, 0]), 1), [5, 6])
  np.testing.assert_array_equal(decode_eval._strip(np.array([5, 6, 0]), 1), [5, 6])


def test_loop_reports_bleu_as_main_metric(tmp_path):
  config = tiny_config(steps=8)
  config.decode = {"bleu": True, "beam_size": 2, "alpha": 0.6, "max_len": 0}
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["main_metric"] == "eval/bleu"
  assert 0.0 <= results["metrics"]["eval/bleu"] <= 100.0
  assert "eval/bleu" in results["best"]
