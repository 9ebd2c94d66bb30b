"""Translate text with a trained translation run, and draw its attention.

    python -m experiments.run.translate --workdir=RUN --input=FILE --output=FILE \
        [--beam_size=N] [--attention_png=FILE] [--sentences=1] [--layer=-1] [--head=-1]

Reads the run's config.json, its vocabulary and its best checkpoint (else the latest), translates
the input line by line (stdin / stdout without files; one output line per input line) and, with
`--attention_png`, draws the source x target cross-attention of the first `--sentences`
sentences as labelled heat maps. Multi-head attention: the heads averaged (`--head=-1`) or one
head; `--layer` picks the decoder layer (Transformer; default the last). Inputs longer than the
run's `data.max_length` are cut to it, with a warning saying how many.
"""

import glob
import os
import sys

import flax.linen as nn
import matplotlib
import ml_collections
import numpy as np
from absl import app, flags, logging

from experiments.run import build, decode_eval
from input_pipeline.text import SentencePieceTokenizer
from models import decoding

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FLAGS = flags.DEFINE_string("workdir", None, "the trained run's directory", required=True)
_INPUT = flags.DEFINE_string("input", None, "source sentences, one a line (default: stdin)")
_OUTPUT = flags.DEFINE_string("output", None, "translations, one a line (default: stdout)")
_BEAM = flags.DEFINE_integer("beam_size", None, "beam size (default: the run's decode.beam_size)")
_BATCH = flags.DEFINE_integer("batch_size", 32, "sentences decoded together")
_PNG = flags.DEFINE_string("attention_png", None, "draw the first sentences' attention here")
_SENTENCES = flags.DEFINE_integer("sentences", 1, "sentences drawn in --attention_png")
_LAYER = flags.DEFINE_integer("layer", -1, "cross-attention layer drawn (-1: the last)")
_HEAD = flags.DEFINE_integer("head", -1, "head drawn (-1: the heads averaged)")


def load(workdir: str):
  """(run, variables, tokenizer) of a trained run: its config, vocabulary, best checkpoint."""

  def example_of(datasets):
    length = datasets.info.max_input_length
    return {k: np.zeros((1, length), np.int32) for k in ("inputs", "targets")}

  run, restored = build.trained(workdir, example_of)
  if restored is None:
    raise FileNotFoundError(f"{workdir} has no checkpoint yet")
  config = run.config
  vocab = (
    config.data.get("vocab_path")
    or sorted(glob.glob(os.path.join(workdir, "translation_*_spm*.model")))[0]
  )
  variables = {"params": restored.params, **(restored.model_state or {})}
  return run, variables, SentencePieceTokenizer(vocab)


def _pad(rows: list[np.ndarray], n: int, length: int) -> np.ndarray:
  out = np.zeros((n, length), np.int32)
  out[:, 0] = 1  # filler rows: a lone EOS
  for i, r in enumerate(rows):
    out[i] = 0
    out[i, : len(r)] = r
  return out


def translate(run, variables, tokenizer, lines: list[str], beam_size=None, batch_size=32):
  """-> (translations, source ids, output ids) of `lines`, in order."""
  config = ml_collections.ConfigDict(run.config.to_dict())
  if beam_size:
    config.decode.beam_size = beam_size
  limit = run.info.max_input_length
  ids = tokenizer.encode(lines, add_eos=True)
  sources = [np.asarray(ids[i], np.int32) for i in range(len(lines))]
  cut = sum(len(s) > limit for s in sources)
  if cut:
    logging.warning("%d of %d input lines longer than %d tokens cut", cut, len(lines), limit)
  sources = [s if len(s) <= limit else np.append(s[: limit - 1], s[-1]) for s in sources]
  outputs = [None] * len(lines)
  order = np.argsort([len(s) for s in sources], kind="stable")
  for start in range(0, len(order), batch_size):
    chunk = order[start : start + batch_size]
    longest = max(len(sources[i]) for i in chunk)
    length = min(limit, 1 << (longest - 1).bit_length())  # few shapes, few compilations
    inputs = _pad([sources[i] for i in chunk], batch_size, length)
    batch = {"inputs": inputs, "targets": np.zeros_like(inputs)}
    tokens = np.asarray(decode_eval.decode_batch(run.model, variables, batch, config, run.info))
    for row, i in enumerate(chunk):
      outputs[i] = decode_eval._strip(tokens[row], run.info.eos_id)
  texts = [tokenizer.decode(o) for o in outputs]
  return texts, sources, outputs


def cross_attention(run, variables, source, output, layer=-1, head=-1) -> np.ndarray:
  """`[T, S]` attention of each output token (and EOS) over the source tokens."""
  target = np.append(output, run.info.eos_id).astype(np.int32)[None]
  maps = decoding.attention_weights(
    run.model, variables, {"inputs": source[None], "targets": target}
  )
  names = sorted(n for n in maps if "cross" in n) or sorted(maps)
  w = np.asarray(maps[names[layer]][0], np.float32)  # [H, T, S]
  return w.mean(0) if head < 0 else w[head]


def _pieces(tokenizer, ids) -> list[str]:
  return ["</s>" if i == 1 else tokenizer.sp.id_to_piece(int(i)) for i in ids]


def draw(path, pairs, tokenizer, title: str) -> None:
  """`pairs`: [(source ids, output ids, weights [T, S])] -> one heat map per sentence."""
  fig, axes = plt.subplots(len(pairs), 1, figsize=(7, 5 * len(pairs)), squeeze=False)
  for ax, (source, output, w) in zip(axes[:, 0], pairs, strict=True):
    image = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(source)), _pieces(tokenizer, source), rotation=90, fontsize=8)
    ax.set_yticks(range(w.shape[0]), _pieces(tokenizer, [*output, 1]), fontsize=8)
    ax.set_xlabel("source token")
    ax.set_ylabel("output token")
    fig.colorbar(image, ax=ax, label="attention weight")
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  del argv
  run, variables, tokenizer = load(FLAGS.value)
  if _INPUT.value:
    with open(_INPUT.value, encoding="utf-8") as f:
      lines = f.read().split("\n")
    lines = lines[:-1] if lines and lines[-1] == "" else lines
  else:
    lines = [ln.rstrip("\n") for ln in sys.stdin]
  with nn.logical_axis_rules(run.axis_rules):
    texts, sources, outputs = translate(run, variables, tokenizer, lines, _BEAM.value, _BATCH.value)
    if _PNG.value and lines:
      pairs = [
        (sources[i], outputs[i], cross_attention(run, variables, sources[i], outputs[i],
                                                 _LAYER.value, _HEAD.value))
        for i in range(min(_SENTENCES.value, len(lines)))
      ]  # fmt: skip
      head = "heads averaged" if _HEAD.value < 0 else f"head {_HEAD.value}"
      draw(_PNG.value, pairs, tokenizer, f"{os.path.basename(FLAGS.value)}: attention, {head}")
  out = "".join(decode_eval._line(t) + "\n" for t in texts)
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w", encoding="utf-8") as f:
      f.write(out)
  else:
    sys.stdout.write(out)


if __name__ == "__main__":
  app.run(main)
