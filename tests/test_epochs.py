"""Schedules given in epochs: converted once from the batches of one epoch, which the input
pipeline counts from the training split and the batch size (experiments/run/epochs.py), so they
follow a changed batch size."""

import ml_collections
import numpy as np
import pytest

from configs import image, text_classification
from experiments.run import epochs, train, validate
from input_pipeline import batching
from input_pipeline.base import SPLITS, TaskInfo


def _batches_per_epoch(data_config, examples: int) -> float:
  """`Datasets.batches_per_epoch` of `examples` one-token training examples (padded batches)."""

  def split(n):
    return batching.Examples(
      {"inputs": batching.Ragged.from_dense(np.ones((n, 1), np.int32))}, {"label": np.zeros(n)}
    )

  config = ml_collections.ConfigDict({"batch_size": data_config.batch_size, "seed": 0})
  info = TaskInfo(kind="classification", vocab_size=2, max_input_length=1, num_classes=2)
  return batching.make_datasets(
    split(examples), {s: split(2) for s in SPLITS}, info, config,
    splits={"train": "t", **{s: s for s in SPLITS}}, lengths={"inputs": 1},
  ).batches_per_epoch  # fmt: skip


def test_image_schedule_follows_the_batch_size():
  config = image.get_config()
  assert config.data.batch_size == 256
  lra = epochs.to_steps(config, _batches_per_epoch(config.data, 45_000))
  assert (lra.train.num_steps, lra.train.eval_every_steps) == (35_156, 176)  # LRA: 35000, 175
  assert lra.optimizer.warmup_steps == 176 and lra.train.checkpoint_every_steps == 1758
  config.data.batch_size = 128  # a non-default batch size: twice the steps, nothing else changes
  half = epochs.to_steps(config, _batches_per_epoch(config.data, 45_000))
  assert (half.train.num_steps, half.optimizer.warmup_steps) == (70_312, 352)
  assert half.train.eval_every_steps == 352 and half.train.checkpoint_every_steps == 3516
  assert config.train.num_steps == 0  # the experiment's own config is not changed


def test_configs_without_epochs_are_returned_as_they_are():
  config = text_classification.get_config()
  assert epochs.given(config) == [] and epochs.to_steps(config, None) is config


def test_epochs_need_the_split_size_and_must_not_be_negative():
  with pytest.raises(ValueError, match=r"train.num_epochs, .* need the number of batches"):
    epochs.to_steps(image.get_config(), None)
  validate.check_config(image.get_config())  # steps fields given in epochs are not required
  config = image.get_config()
  config.train.num_epochs = -1.0
  with pytest.raises(validate.ConfigError, match="train.num_epochs=-1.0 must be >= 0"):
    validate.check_config(config)


def test_a_run_in_epochs_trains_that_many_passes(tmp_path):
  rows = [f"{i % 2}\t{'ab' * (1 + i % 5)} {i}" for i in range(40)]
  for split in ("train", "val", "test"):
    (tmp_path / f"{split}.tsv").write_text("\n".join(rows) + "\n")
  config = text_classification.get_config("max_length=16")
  config.data.update(
    dataset="files", train_path=str(tmp_path / "train.tsv"),
    validation_path=str(tmp_path / "val.tsv"), test_path=str(tmp_path / "test.tsv"), batch_size=8,
  )  # fmt: skip
  config.model.update(emb_dim=16, qkv_dim=16, mlp_dim=16, classifier_dim=16, num_heads=2,
                      num_encoder_layers=1)  # fmt: skip
  config.train.update(num_epochs=2.0, eval_every_epochs=1.0, checkpoint_every_epochs=2.0,
                      log_every_steps=5)  # fmt: skip
  config.optimizer.warmup_epochs = 0.5
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["step"] == 10  # 2 epochs of 40 examples, batches of 8
  assert results["config"]["train"]["num_steps"] == 10
  assert results["config"]["train"]["eval_every_steps"] == 5
  assert results["config"]["optimizer"]["warmup_steps"] == 2  # round(0.5 * 5)
