"""Schedules given in epochs, converted to steps once, where the run is built.

Each `*_epochs` field below that is > 0 sets its `*_steps` field to
`max(1, round(epochs * batches_per_epoch))`, where `batches_per_epoch` is what the input pipeline
says one visit of every training example takes (`Datasets.batches_per_epoch`: examples /
batch_size, packed rows / batch_size, or the batches of the length buckets), so a schedule follows
the corpus, the batch size and the batching.
"""

import ml_collections
from absl import logging

FIELDS = (  # (section, field in epochs, field in steps)
  ("train", "num_epochs", "num_steps"),
  ("train", "eval_every_epochs", "eval_every_steps"),
  ("train", "checkpoint_every_epochs", "checkpoint_every_steps"),
  ("optimizer", "warmup_epochs", "warmup_steps"),
)


def given(config: ml_collections.ConfigDict) -> list[str]:
  """The `section.field` names of the epoch fields set (> 0) in `config`."""
  return [
    f"{section}.{epochs}"
    for section, epochs, _ in FIELDS
    if section in config and (config[section].get(epochs) or 0) > 0
  ]


def to_steps(config: ml_collections.ConfigDict, batches_per_epoch: float | None):
  """A copy of `config` with every epoch field converted (the config itself when none is set)."""
  if not given(config):
    return config
  if not batches_per_epoch:
    raise ValueError(
      f"{', '.join(given(config))} need the number of batches in an epoch, which this task does "
      "not know (a generated stream, or packed or bucketed batches of a split read per "
      "process); give the *_steps fields instead"
    )
  out = config.copy_and_resolve_references()
  for section, epochs, steps in FIELDS:
    value = out[section].get(epochs) or 0
    if value > 0:
      if out[section].get(steps):
        logging.warning("%s.%s=%s is replaced by %s.%s=%s", section, steps, out[section][steps],
                        section, epochs, value)  # fmt: skip
      out[section][steps] = max(1, round(value * batches_per_epoch))
  return out
