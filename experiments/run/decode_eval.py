"""Evaluation by decoding: translate an eval split (greedy or beam search) and score BLEU.

Enabled for seq2seq tasks by `config.decode.bleu = True`; the loop then adds `eval/bleu` to the
eval metrics (and uses it as the main metric). Hypotheses are detokenized with the task's
`TaskInfo.detokenize` and scored with sacrebleu against the raw reference text of the split
(`Datasets.references`; tasks without raw text: their detokenized target ids), as in the WMT
papers. With a workdir, the scored text is on disk, one sentence per line, in split order:

    DIR/references-<split>.txt           the raw references
    DIR/hypotheses-<split>-<step>.txt    the decoded output of the checkpoint at <step>

and BLEU is computed from these two files (`bleu_of_files`), so `sacrebleu
references-test.txt -i hypotheses-test-<step>.txt` gives the reported number; `signature()`
(stored in results.json) says how it was computed.
"""

import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import sacrebleu
from jax.experimental import multihost_utils

from experiments.run import sharding
from models import decoding


def enabled(config: ml_collections.ConfigDict, info) -> bool:
  return bool(config.get("decode", {}).get("bleu", False)) and info.kind == "seq2seq"


def signature() -> str:
  """sacrebleu's signature of the BLEU computed here (tokeniser, smoothing, version)."""
  bleu = sacrebleu.metrics.BLEU()
  bleu.corpus_score(["a"], [["a"]])  # the signature counts the references (one set)
  return str(bleu.get_signature())


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


def _line(text: str) -> str:
  return " ".join(text.splitlines())  # one sentence, one line


def write_lines(path: str, lines: Sequence[str]) -> None:
  """One line per sentence (newlines inside a sentence become spaces), written atomically."""
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(_line(t) + "\n" for t in lines)
  os.replace(tmp, path)


def read_lines(path: str) -> list[str]:
  with open(path, encoding="utf-8") as f:
    return f.read().split("\n")[:-1]


def bleu_of_files(hypotheses_path: str, references_path: str) -> float:
  """Corpus BLEU (sacrebleu's defaults: 13a tokenisation, exponential smoothing) of two
  line-aligned files."""
  hypotheses, references = read_lines(hypotheses_path), read_lines(references_path)
  if len(hypotheses) != len(references):
    raise ValueError(
      f"{hypotheses_path} has {len(hypotheses)} lines but {references_path} {len(references)}"
    )
  return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


def translate(model, state, eval_batches, config, info, mesh) -> tuple[list[str], list[str]]:
  """(hypotheses, detokenized target ids) of every valid example of an eval split, in split
  order; every process gets all of them. The split is sharded by index over processes
  (`Examples.shard`: process p holds examples p, p + P, ...), valid rows first, so each row's
  place in the split is known from its process and its position there."""
  variables = {"params": state.params, **(state.model_state or {})}
  process, processes, seen = jax.process_index(), jax.process_count(), 0
  decoded = {}
  for local in eval_batches:
    index = process + (seen + np.arange(len(local["valid"]))) * processes
    seen += len(local["valid"])
    batch = sharding.global_batch({k: v for k, v in local.items() if k != "valid"}, mesh)
    tokens = decode_batch(model, variables, batch, config, info)
    extra = sharding.global_batch({"valid": local["valid"], "index": index.astype(np.int32)}, mesh)
    tokens, targets, valid, index = (
      np.asarray(multihost_utils.process_allgather(x, tiled=True))
      for x in (tokens, batch["targets"], extra["valid"], extra["index"])
    )
    for hyp, ref, ok, i in zip(tokens, targets, valid, index, strict=True):
      if ok:
        decoded[int(i)] = (hyp, ref)
  if sorted(decoded) != list(range(len(decoded))):
    raise ValueError("the decoded eval examples are not the whole split; check eval sharding")
  order = [decoded[i] for i in range(len(decoded))]
  detok = info.detokenize
  return (
    [detok(_strip(h, info.eos_id)) for h, _ in order],
    [detok(_strip(r, info.eos_id)) for _, r in order],
  )


def bleu_score(
  model, state, eval_batches, config, info, mesh, *,
  references: Sequence[str] | None = None, workdir: str | None = None, split: str = "validation",
) -> float:  # fmt: skip
  """Corpus BLEU of the decoded eval split against `references` (its raw target text; None:
  the detokenized target ids), all processes agreeing. With `workdir`, process 0 writes the
  references and `hypotheses-<split>-<step>.txt` there and BLEU is read back from the files."""
  hypotheses, from_ids = translate(model, state, eval_batches, config, info, mesh)
  references = from_ids if references is None else list(references)
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} {split} references")
  if workdir is None or jax.process_index() != 0:  # the same text, scored in memory
    return float(
      sacrebleu.corpus_bleu([_line(h) for h in hypotheses], [[_line(r) for r in references]]).score
    )
  step = int(jax.device_get(state.step))
  hypotheses_path = os.path.join(workdir, f"hypotheses-{split}-{step}.txt")
  references_path = os.path.join(workdir, f"references-{split}.txt")
  write_lines(hypotheses_path, hypotheses)
  write_lines(references_path, references)
  return bleu_of_files(hypotheses_path, references_path)
