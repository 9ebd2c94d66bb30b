"""Translation as researchers use it, on tiny local parallel text: BLEU from the files the run
writes, and what the length limit does to each split."""

import json
import os

import ml_collections
import numpy as np
import pytest
import sacrebleu

import input_pipeline
from experiments.run import decode_eval, train
from tests.helpers import parallel_text, records, tiny_config


def translation_config(directory, steps=4, max_length=16) -> ml_collections.ConfigDict:
  """A GRU + additive attention run of a few steps on `parallel_text`, BLEU by greedy decoding."""
  config = tiny_config(steps=steps, name="rnn_seq2seq", cell="gru", hidden_dim=32)
  config.model.attention.name = "additive"
  config.data = ml_collections.ConfigDict(dict(
    name="translation", dataset="files", **parallel_text(directory), source_lang="en",
    target_lang="de", max_length=max_length, vocab_size=40, batch_size=8, seed=0,
    eval_examples=0, bucket_by_length=True,
  ))  # fmt: skip
  config.model.max_len = max_length
  config.decode = {"bleu": True, "beam_size": 1, "alpha": 0.6, "max_len": 0}
  return config


def _lines(path) -> list[str]:
  with open(path, encoding="utf-8") as f:
    return f.read().splitlines()


def test_bleu_is_sacrebleu_of_the_written_hypotheses_and_raw_references(tmp_path):
  config = translation_config(tmp_path)
  run = str(tmp_path / "run")
  results = train.train_and_evaluate(config, run)
  assert results["bleu_signature"] == decode_eval.signature()
  assert "tok:13a" in results["bleu_signature"]
  for split, prefix, step in (("validation", "eval", 4), ("test", "test", results["best_step"])):
    references = _lines(os.path.join(run, f"references-{split}.txt"))
    assert references == _lines(config.data[f"{'dev' if split == 'validation' else 'test'}_tgt"])
    hypotheses = _lines(os.path.join(run, f"hypotheses-{split}-{step}.txt"))
    assert len(hypotheses) == len(references) == 16
    expected = sacrebleu.corpus_bleu(hypotheses, [references]).score
    scored = results["metrics" if prefix == "eval" else "test"][f"{prefix}/bleu"]
    assert scored == pytest.approx(expected, abs=1e-9)
  with open(os.path.join(run, "results.json")) as f:
    assert json.load(f)["lengths"]["validation"] == {"examples": 16, "cut": 0}


def test_long_pairs_are_dropped_from_train_and_counted_when_cut_in_eval(tmp_path, caplog):
  """max_length=6 tokens: long training pairs are dropped, long eval pairs cut (EOS kept last),
  both counted and logged; the references stay whole."""
  config = translation_config(tmp_path, max_length=6)
  data = input_pipeline.get_datasets(config.data, workdir=str(tmp_path / "run"))
  lengths = data.lengths
  assert 0 < lengths["train"]["dropped"] < lengths["train"]["examples"] == 160
  assert 0 < lengths["validation"]["cut"] < lengths["validation"]["examples"] == 16
  assert "dropped" in caplog.text and "cut to fit" in caplog.text
  for batch in data.train_dataset(0).take(4).as_numpy_iterator():
    assert (batch["targets"] > 0).sum(1).max() <= 6
  assert data.references["validation"] == _lines(config.data.dev_tgt)  # whole sentences
  batch = next(data.eval_dataset("validation").as_numpy_iterator())
  rows = batch["targets"][batch["valid"]]
  assert rows.shape[1] == 6
  last = rows[np.arange(len(rows)), (rows > 0).sum(1) - 1]
  assert (last == data.info.eos_id).all()  # a cut sentence still ends with EOS


@pytest.mark.parametrize("family", ["rnn_seq2seq", "transformer"])
def test_translate_a_file_with_a_trained_run(tmp_path, family):
  """N lines in -> N translations out, plus a PNG of the first sentence's attention."""
  from experiments.run import translate

  config = translation_config(tmp_path)
  config.model.name = family
  config.decode.beam_size = 2
  run_dir = str(tmp_path / "run")
  train.train_and_evaluate(config, run_dir)
  run, variables, tokenizer = translate.load(run_dir)
  lines = _lines(config.data.test_src)[:5] + ["cat " * 30]  # the last is longer than max_length
  texts, sources, outputs = translate.translate(run, variables, tokenizer, lines, beam_size=2)
  assert len(texts) == len(lines) and all("\n" not in t for t in texts)
  w = translate.cross_attention(run, variables, sources[0], outputs[0])
  assert w.shape == (len(outputs[0]) + 1, len(sources[0]))
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-4)
  png = tmp_path / "attention.png"
  translate.draw(str(png), [(sources[0], outputs[0], w)], tokenizer, "test")
  assert png.stat().st_size > 1000


def test_small_preset_runs_from_the_file_paths_alone(tmp_path):
  """configs/translation.py:preset=small with only the file fields set (and a tiny model and
  vocabulary here): trains in epochs on bucketed batches and scores dev BLEU."""
  from configs import translation

  config = translation.get_config("preset=small")
  assert config.data.bucket_by_length and config.data.batch_tokens == 4096
  config.data.update(parallel_text(tmp_path), vocab_size=40, batch_size=4, batch_tokens=128)
  config.model.update(emb_dim=16, hidden_dim=16)
  config.train.num_epochs = 1
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["status"] == "finished"
  assert results["main_metric"] == "eval/bleu" and "test/bleu" in results["test"]
  # one epoch of ~128-token batches: 16 rows of length 8, 8 of 16, 4 of 32
  data = input_pipeline.get_datasets(config.data, workdir=str(tmp_path / "run"))
  epoch = list(data.train_dataset(0).take(int(data.batches_per_epoch)).as_numpy_iterator())
  assert results["step"] == len(epoch) == data.batches_per_epoch < 160 / 4
  shapes = {b["inputs"].shape for b in epoch}
  assert len(shapes) > 1 and all(r * length <= 128 and r % 4 == 0 for r, length in shapes)
  # tokens/s counts each batch's own tokens (one log interval here: the whole epoch)
  (train_record,) = [r for r in records(tmp_path / "run") if "train/loss" in r]
  per_step = train_record["train/tokens_per_sec"] / train_record["train/steps_per_sec"]
  assert per_step == pytest.approx(np.mean([b["inputs"].size + b["targets"].size for b in epoch]))


def test_early_stopping_after_evaluations_without_improvement(tmp_path):
  """early_stopping_evals=1 and no learning: the second evaluation is no better, so the
  run stops there and still reports the best checkpoint on test."""
  config = translation_config(tmp_path, steps=12)
  config.train.update(eval_every_steps=2, early_stopping_evals=1)
  config.optimizer.learning_rate = 1e-12  # the same output at every evaluation
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["stopped_early"] and results["step"] == 4 and results["best_step"] == 2
  assert results["status"] == "finished" and "test/bleu" in results["test"]
