"""Evaluation by decoding: translate the eval set (greedy or beam search) and score BLEU.

Enabled for seq2seq tasks by `config.decode.bleu = True`; the loop then adds `eval/bleu` to the
eval metrics (and uses it as the main metric). Hypotheses and references are detokenized with the
task's `TaskInfo.detokenize` and scored with sacrebleu on text, as in the WMT papers.
"""

from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from experiments.run import sharding
from input_pipeline.translation import bleu
from models import decoding


def enabled(config: ml_collections.ConfigDict, info) -> bool:
  return bool(config.get("decode", {}).get("bleu", False)) and info.kind == "seq2seq"


def _strip(ids: np.ndarray, eos_id: int) -> np.ndarray:
  """Tokens up to (not including) EOS, padding removed."""
  ids = ids[ids > 0]
  stop = np.flatnonzero(ids == eos_id)
  return ids[: stop[0]] if stop.size else ids


def decode_batch(model: nn.Module, variables: Any, batch, config, info) -> jax.Array:
  """`[B, L]` decoded target ids (EOS then padding)."""
  cfg = config.decode
  max_len = cfg.get("max_len") or info.max_target_length
  if cfg.get("beam_size", 1) > 1:
    tokens, _ = decoding.beam_search(
      model, variables, batch, beam_size=cfg.beam_size, alpha=cfg.get("alpha", 0.6),
      max_len=max_len, eos_id=info.eos_id,
    )  # fmt: skip
    return tokens[:, 0]
  return decoding.greedy(model, variables, batch, max_len=max_len, eos_id=info.eos_id)


def bleu_score(model, state, eval_batches, config, info, mesh) -> float:
  """Corpus BLEU of the decoded eval set against its references (all processes agree)."""
  variables = {"params": state.params, **(state.model_state or {})}
  hypotheses, references = [], []
  for local in eval_batches:
    batch = sharding.global_batch({k: v for k, v in local.items() if k != "valid"}, mesh)
    tokens = decode_batch(model, variables, batch, config, info)
    tokens = np.asarray(multihost_utils.process_allgather(tokens, tiled=True))
    targets = np.asarray(multihost_utils.process_allgather(batch["targets"], tiled=True))
    valid = np.asarray(
      multihost_utils.process_allgather(
        sharding.global_batch({"v": local["valid"]}, mesh)["v"], tiled=True
      )
    )
    for hyp, ref, ok in zip(tokens, targets, valid, strict=True):
      if ok:
        hypotheses.append(info.detokenize(_strip(hyp, info.eos_id)))
        references.append(info.detokenize(_strip(ref, info.eos_id)))
  return bleu(hypotheses, references)
