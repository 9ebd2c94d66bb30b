"""Attention maps of a trained run: every sown `attention_weights` for one fixed eval example.

The run is rebuilt from its workdir (config.json, best checkpoint else the latest), the first eval
example is run with the `intermediates` collection mutable, and each layer's weights are drawn
per head with the example's tokens on the axes.
"""

import json
import os

import flax.linen as nn
import jax
import matplotlib
import ml_collections
import numpy as np

import input_pipeline
import models
from experiments import checkpoints, optim, sharding, train

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _labels(ids: np.ndarray, info) -> list[str]:
  if info.detokenize is None:
    return [str(int(i)) for i in ids]
  return [info.detokenize(np.array([i])) or str(int(i)) for i in ids]


def weights_of(run_dir: str) -> tuple[list[tuple[str, np.ndarray]], dict, object] | None:
  """[(layer path, [H, Tq, Tk])] for the first eval example, its batch and the task info."""
  with open(os.path.join(run_dir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  datasets = input_pipeline.get_datasets(config.data, workdir=run_dir)
  info = datasets.info
  model = models.build(config.model, info)
  example = next(datasets.eval_dataset().as_numpy_iterator())
  example = {k: v[:1] for k, v in example.items() if k != "valid"}
  mesh = sharding.make_mesh((1, 1, 1) if jax.device_count() == 1 else config.mesh.shape)
  tx = optim.create(config.optimizer, config.train.num_steps)
  with nn.logical_axis_rules(tuple(tuple(r) for r in config.mesh.logical_axis_rules)):
    state, _ = train.create_state(config, model, tx, mesh, example)
    metric, mode = train.main_metric(config, info)
    with checkpoints.Checkpoints(run_dir, config.train.keep_checkpoints, metric, mode) as ckpt:
      restored = ckpt.restore_best(state)
      if restored is None:
        latest = ckpt.restore_latest(state)
        restored = latest[0] if latest else None
    if restored is None:
      return None
    variables = {"params": restored.params, **(restored.model_state or {})}
    _, inter = model.apply(variables, example, train=False, mutable=["intermediates"])
  maps = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(inter)[0]:
    names = [str(p.key) for p in path if hasattr(p, "key")]  # dict keys; drops sow's tuple index
    if "attention_weights" in names and np.ndim(leaf) == 4:
      layer = "/".join(n for n in names if n not in ("intermediates", "attention_weights"))
      maps.append((layer, np.asarray(leaf[0], np.float32)))
  maps.sort(key=lambda m: ("encoder" not in m[0], m[0]))  # encoder layers first
  return maps, example, info


def draw(run_dir: str, path: str, max_layers: int = 6, max_heads: int = 4) -> str | None:
  """Writes a grid (layers x heads) of heat maps; None if the run has no weights to show."""
  found = weights_of(run_dir)
  if not found or not found[0]:
    return None
  maps, example, info = found
  maps = maps[:max_layers]
  heads = min(max_heads, maps[0][1].shape[0])
  fig, axes = plt.subplots(
    len(maps), heads, figsize=(2.8 * heads + 1, 2.8 * len(maps)), squeeze=False
  )
  for row, (layer, w) in enumerate(maps):
    q_ids, k_ids = (_axis_tokens(example, n) for n in w.shape[1:])
    wq, wk = len(q_ids) or w.shape[1], len(k_ids) or w.shape[2]
    for h in range(heads):
      ax = axes[row, h]
      ax.imshow(w[h, :wq, :wk], cmap="viridis", vmin=0.0, aspect="auto")
      ax.set_title(f"{layer}\nhead {h}", fontsize=7)
      if len(k_ids) <= 40:
        ax.set_xticks(range(wk), _labels(k_ids, info), fontsize=6, rotation=90)
      if len(q_ids) <= 40:
        ax.set_yticks(range(wq), _labels(q_ids, info), fontsize=6)
      ax.set_xlabel("key token", fontsize=7)
      ax.set_ylabel("query token", fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _axis_tokens(example: dict[str, np.ndarray], length: int) -> np.ndarray:
  """The example's non-padding tokens along an axis of this padded length (inputs or targets)."""
  for key in ("inputs", "targets"):
    if key in example and example[key].shape[1] == length:
      ids = example[key][0]
      return ids[ids > 0]
  return np.array([], np.int32)
