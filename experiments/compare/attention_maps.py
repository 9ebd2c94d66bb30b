"""Attention maps of a trained run: every sown `attention_weights` for one fixed eval example.

The run is rebuilt from its workdir (config.json; the best checkpoint, else the latest), the eval
example with the most tokens in the first eval batch is run with the `intermediates` collection
mutable, and each layer's weights `[H, Tq, Tk]` are drawn per head with the tokens on the axes.
Types that form no weights matrix (linear, Performer) sow none and get no map.
"""

import functools
import os
import re
import textwrap
from typing import Any

import flax.linen as nn
import jax
import matplotlib
import numpy as np

from experiments.run import build

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

AXES = {"inputs": "source", "targets": "target", "inputs2": "second input"}


def _example(datasets) -> dict[str, np.ndarray]:
  """The valid example with the most tokens in the first validation batch, as a batch of one."""
  batch = next(datasets.eval_dataset("validation").as_numpy_iterator())
  tokens = sum((v > 0).reshape(len(v), -1).sum(1) for k, v in batch.items() if k in AXES)
  tokens = np.where(batch.get("valid", np.ones_like(tokens, bool)), tokens, -1)
  i = int(np.argmax(tokens))
  return {k: v[i : i + 1] for k, v in batch.items() if k != "valid"}


def _order(layer: str) -> tuple:
  """Encoder before decoder, blocks in order, self- before cross-attention."""
  blocks = [int(n) for n in re.findall(r"_(\d+)(?:/|$)", layer)]
  return ("decoder" in layer or not layer, blocks, "cross" in layer, layer)


def weights_of(run_dir: str) -> tuple[list[tuple[str, np.ndarray]], dict, Any] | None:
  """([(layer path, weights [H, Tq, Tk])], the example batch, the task info) of a run, or None
  when it has no checkpoint yet."""
  run, restored = build.trained(run_dir, _example)
  if restored is None:
    return None
  example = run.example
  with nn.logical_axis_rules(run.axis_rules):
    variables = {"params": restored.params, **(restored.model_state or {})}
    apply = jax.jit(functools.partial(run.model.apply, train=False, mutable=["intermediates"]))
    _, inter = apply(variables, example)
  info = run.info
  maps = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(inter)[0]:
    names = [str(p.key) for p in path if hasattr(p, "key")]  # dict keys; drops sow's tuple index
    if "attention_weights" in names and np.ndim(leaf) == 4:
      layer = "/".join(n for n in names if n not in ("intermediates", "attention_weights"))
      maps.append((layer, np.asarray(leaf[0], np.float32)))
  return sorted(maps, key=lambda m: _order(m[0])), example, info


def _tokens(example: dict[str, np.ndarray], length: int, info) -> tuple[str, list[str]]:
  """(axis name, token labels) of the example's sequence of this padded length."""
  for key, role in AXES.items():
    if key in example and example[key].shape[1] == length:
      ids = [int(i) for i in example[key][0] if i > 0]
      return role, [_label(i, info) for i in ids]
  return "position", [str(i) for i in range(length)]


def _label(token: int, info) -> str:
  if token == getattr(info, "eos_id", None):
    return "</s>"
  text = info.detokenize(np.array([token])) if info.detokenize else ""
  return text.strip() or str(token)


def draw(run_dir: str, path: str, max_layers: int = 8, max_heads: int = 4) -> str | None:
  """Writes a grid (layers x heads) of heat maps to `path`; None if the run sows no weights."""
  found = weights_of(run_dir)
  if not found or not found[0]:
    return None
  maps, example, info = found
  maps = maps[:max_layers]
  heads = min(max_heads, max(w.shape[0] for _, w in maps))
  longest = max(max(w.shape[1:]) for _, w in maps)
  cell = float(np.clip(0.17 * longest, 2.2, 4.5))  # inches per map
  size = (max(cell * heads + 1.5, 5.0), cell * len(maps) + 1.0)  # room for the title and bar
  fig, axes = plt.subplots(len(maps), heads, figsize=size, squeeze=False, layout="constrained")
  image = None
  for row, (layer, w) in enumerate(maps):
    q_role, q_labels = _tokens(example, w.shape[1], info)
    k_role, k_labels = _tokens(example, w.shape[2], info)
    nq, nk = min(len(q_labels), w.shape[1]), min(len(k_labels), w.shape[2])
    for h in range(heads):
      ax = axes[row, h]
      if h >= w.shape[0]:
        ax.axis("off")
        continue
      image = ax.imshow(w[h, :nq, :nk], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
      ax.set_title(f"{layer or 'decoder step -> encoder'}\nhead {h}", fontsize=7)
      small = 7 if max(nq, nk) <= 20 else 5
      if nk <= 64:
        ax.set_xticks(range(nk), k_labels[:nk], fontsize=small, rotation=90)
      ax.set_xlabel(f"key: {k_role} token", fontsize=7)
      if h == 0:  # the heads of a row share their queries: labelled once, on the left
        if nq <= 64:
          ax.set_yticks(range(nq), q_labels[:nq], fontsize=small)
        ax.set_ylabel(f"query: {q_role} token", fontsize=7)
      else:
        ax.set_yticks([])
  name = os.path.basename(os.path.normpath(run_dir)).replace(",", ", ")
  fig.suptitle(textwrap.fill(f"{name}: attention weights", 12 * size[0]), fontsize=9)
  if image is not None:
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    bar.set_label("attention weight", fontsize=8)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
