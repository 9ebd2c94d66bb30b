"""One run, built once for whoever needs it (the loop, the benchmarks, attention maps):

config -> datasets -> model -> mesh -> state -> compiled steps -> checkpoints

run = build.build(config, workdir=DIR)       # or info=TaskInfo(...) for a synthetic task
with run.checkpoints(DIR) as ckpt: ...
"""

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

import input_pipeline
import models
from experiments.run import (
  batches,
  checkpoints,
  decode_eval,
  epochs,
  optim,
  sharding,
  state,
  steps,
  tasks,
  validate,
)


@dataclasses.dataclass
class Run:
  config: ml_collections.ConfigDict
  datasets: Any  # input_pipeline.Datasets, or None for a synthetic task given by its info
  info: Any
  model: nn.Module
  mesh: jax.sharding.Mesh
  state: state.TrainState
  state_sharding: Any
  steps: steps.Steps
  num_params: int
  example: dict[str, np.ndarray]  # the batch that fixed the state's shapes

  @property
  def axis_rules(self) -> tuple[tuple[str, Any], ...]:
    return tuple(tuple(r) for r in self.config.mesh.logical_axis_rules)

  @property
  def main_metric(self) -> tuple[str, str]:
    return main_metric(self.config, self.info)

  def checkpoints(self, workdir: str) -> checkpoints.Checkpoints:
    name, mode = self.main_metric
    return checkpoints.Checkpoints(workdir, self.config.train.keep_checkpoints, name, mode)


def main_metric(config: ml_collections.ConfigDict, info) -> tuple[str, str]:
  """The eval metric that picks the best checkpoint, and whether higher ('max') is better."""
  if decode_eval.enabled(config, info):
    return "bleu", "max"
  return tasks.MAIN_METRIC[info.kind]


def one_device_mesh() -> jax.sharding.Mesh:
  """A mesh of this process's first device (e.g. a batch of one example)."""
  return jax.sharding.Mesh(
    np.asarray(jax.local_devices()[:1]).reshape(1, 1, 1),
    sharding.MESH_AXES,
    axis_types=(jax.sharding.AxisType.Auto,) * 3,
  )


def build(
  config: ml_collections.ConfigDict,
  *,
  workdir: str | None = None,
  info: Any = None,
  datasets: Any = None,
  mesh: jax.sharding.Mesh | None = None,
  example: dict[str, np.ndarray] | None = None,
) -> Run:
  """Builds `config`'s run. Datasets are read from the config (vocabularies in `workdir`) unless
  given, or unless `info` describes a synthetic task; `example` (default: a placeholder of the
  train batches) fixes the state's shapes. Steps compile on their first batch. Schedules given
  in epochs are converted to steps here (`Run.config` holds the steps)."""
  if info is None and datasets is None:
    datasets = input_pipeline.get_datasets(
      config.data,
      workdir=workdir,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
  if info is None:
    info = datasets.info
    try:
      config = epochs.to_steps(config, datasets.batches_per_epoch)
    except ValueError as e:
      raise validate.ConfigError(str(e)) from None
    validate.check_config_for_task(config, info)
  model = models.build(config.model, info)
  mesh = mesh or sharding.make_mesh(config.mesh.shape)
  tx = optim.create(config.optimizer, config.train.num_steps)
  if example is None:
    example = batches.placeholder(datasets.train_dataset(0), config.data.batch_size, info)
  with nn.logical_axis_rules(tuple(tuple(r) for r in config.mesh.logical_axis_rules)):
    initial, state_sharding = state.create(config, model, tx, mesh, example)
  compiled = steps.make(config, info.kind, state_sharding, mesh)
  num_params = sum(x.size for x in jax.tree.leaves(nn.unbox(initial.params)))
  return Run(
    config, datasets, info, model, mesh, initial, state_sharding, compiled, num_params, example
  )


def trained(workdir: str, example_of: Callable[[Any], dict[str, np.ndarray]]):
  """(run, its best state, else its latest; None before the first checkpoint) of a trained run
  in `workdir`, on one device: the run's config.json, data and vocabulary; `example_of(datasets)`
  gives the batch shapes it is rebuilt with."""
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  datasets = input_pipeline.get_datasets(config.data, workdir=workdir)
  example = example_of(datasets)
  run = build(config, datasets=datasets, mesh=one_device_mesh(), example=example)
  with nn.logical_axis_rules(run.axis_rules), run.checkpoints(workdir) as ckpt:
    restored = ckpt.restore_best(run.state)
    if restored is None:
      latest = ckpt.restore_latest(run.state)
      restored = latest[0] if latest else None
  return run, restored
