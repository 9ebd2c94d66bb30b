"""RNN+additive attention vs a Transformer of about the same size: train step and decoding.

    python -m experiments.benchmarks.rnn_step [--label=NAME]

The RNN: `rnn_seq2seq`, LSTM, hidden = embedding = 256, a bidirectional encoder, Bahdanau
placement with `additive` attention (one head of width 256); the Transformer: 1 + 1 layers,
d = 256, 4 heads, MLP 1024, untied embeddings (a similar parameter count, printed). Both on
random tokens, vocabulary 4000, B = 32 rows of S = T = 32 tokens; an Adam step (jitted, the
median of 10 after one), greedy and beam-4 decoding of T tokens (EOS never ends a row early).
Prints one JSON line per model.
"""

import dataclasses
import json
import statistics
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

import models
from models import decoding

B, S, T, H, VOCAB = 32, 32, 32, 256, 4000
RNN = {
  "name": "rnn_seq2seq", "emb_dim": H, "hidden_dim": H, "cell": "lstm", "num_layers": 1,
  "bidirectional": True, "attention_placement": "bahdanau", "attention": {"name": "additive"},
}  # fmt: skip
TRANSFORMER = {
  "name": "transformer", "emb_dim": H, "qkv_dim": H, "num_heads": 4, "mlp_dim": 4 * H,
  "num_encoder_layers": 1, "num_decoder_layers": 1, "max_len": 64, "share_embeddings": False,
  "logits_via_embedding": False, "attention": {"name": "scaled_dot"},
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Info:
  kind: str = "seq2seq"
  vocab_size: int = VOCAB
  target_vocab_size: int | None = None
  num_classes: int | None = None
  max_input_length: int = S
  max_target_length: int = T
  eos_id: int = 1


def _median_s(fn, reps: int) -> float:
  jax.block_until_ready(fn())
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def run(model_config: dict[str, Any], reps: int = 10) -> dict[str, Any]:
  model = models.build(model_config, Info())
  rng = np.random.default_rng(0)
  batch = {k: jnp.asarray(rng.integers(2, VOCAB, (B, S)), jnp.int32) for k in ("inputs", "targets")}
  params = jax.jit(model.init)(jax.random.key(0), batch)["params"]
  tx = optax.adam(1e-3)
  state = {"params": params, "opt": tx.init(params)}

  def loss_fn(p):
    logits = model.apply({"params": p}, batch, train=True, rngs={"dropout": jax.random.key(1)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()

  @jax.jit
  def step(p, o):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss

  def train():
    state["params"], state["opt"], loss = step(state["params"], state["opt"])
    return loss

  variables = {"params": params}
  train_s = _median_s(train, reps)
  greedy_s = _median_s(lambda: decoding.greedy(model, variables, batch, max_len=T, eos_id=0), 5)
  beam_s = _median_s(
    lambda: decoding.beam_search(model, variables, batch, beam_size=4, max_len=T, eos_id=0), 3
  )
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(params)))
  return {
    "family": model_config["name"],
    "params": count,
    "train_step_ms": round(1e3 * train_s, 1),
    "greedy_tokens_per_s": round(B * T / greedy_s),
    "beam4_tokens_per_s": round(B * T / beam_s),
  }


def main(argv):
  del argv
  for model_config in (RNN, TRANSFORMER):
    print(json.dumps({"label": flags.FLAGS.label, **run(model_config)}), flush=True)


if __name__ == "__main__":
  flags.DEFINE_string("label", "", "a name for the rows (e.g. the commit)")
  app.run(main)
