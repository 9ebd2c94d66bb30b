"""Every model family learns: it fits a tiny fixed task in a few hundred steps, and the same
model fed zeroed inputs cannot (so the fit comes from reading the inputs, not from the labels).

Tasks (32 fixed examples each, symbols 2..7, 0 = padding, 1 = EOS):
  seq2seq: reverse 3 symbols;  lm: a b c a b c (the second half repeats the first);
  classification: the class is the first symbol;  retrieval: do the two first symbols agree.
Metrics are the tasks' own (`experiments.run.tasks`): sequence accuracy, or for lm the token
accuracy on the repeated half.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import models
from experiments.run import tasks
from input_pipeline.base import TaskInfo

N, STEPS = 32, 200


Info = functools.partial(
  TaskInfo,
  vocab_size=8,
  target_vocab_size=None,
  num_classes=3,
  max_input_length=6,
  max_target_length=4,
  eos_id=1,
)


def _tiny(name: str, **kw) -> dict:
  cfg = dict(
    name=name, emb_dim=32, qkv_dim=32, mlp_dim=64, num_heads=2, num_encoder_layers=1,
    num_decoder_layers=1, max_len=8, hidden_dim=32, dropout_rate=0.0,
    attention_dropout_rate=0.0, attention={"name": "scaled_dot"},
  )  # fmt: skip
  cfg.update(kw)
  return cfg


def _task(kind: str) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  x = rng.integers(2, 8, size=(N, 3))
  if kind == "seq2seq":
    return {"inputs": x, "targets": np.concatenate([x[:, ::-1], np.ones((N, 1), int)], 1)}
  if kind == "lm":
    return {"inputs": np.concatenate([x, x], 1)}
  first = rng.integers(0, 3, size=N)
  inputs = np.concatenate([first[:, None] + 2, x], 1)
  if kind == "classification":
    return {"inputs": inputs, "label": first}
  same = rng.integers(0, 2, size=N).astype(bool)
  other = np.where(same, first, (first + rng.integers(1, 3, size=N)) % 3)
  inputs2 = np.concatenate([other[:, None] + 2, rng.integers(2, 8, size=(N, 3))], 1)
  return {"inputs": inputs, "inputs2": inputs2, "label": same.astype(int)}


FAMILIES = {
  "transformer": ("seq2seq", _tiny("transformer")),
  "rnn_seq2seq": ("seq2seq", _tiny("rnn_seq2seq")),
  "decoder_lm": ("lm", _tiny("decoder_lm")),
  "encoder_classifier": ("classification", _tiny("encoder_classifier", pooling="mean")),
  "dual_encoder": ("retrieval", _tiny("dual_encoder", pooling="mean", num_classes=2)),
}


@functools.cache
def _fitter(model: nn.Module, kind: str):
  """Jitted: parameters, model inputs, labelled batch -> logits after STEPS steps of Adam."""
  tx = optax.adam(1e-2)

  def loss_fn(params, seen, batch):
    logits = model.apply({"params": params}, seen, train=False)
    return tasks.loss_and_metrics(kind, logits, batch)[0], logits

  @jax.jit
  def fit(params, seen, batch):
    def step(_, carry):
      params, opt = carry
      grads = jax.grad(lambda p: loss_fn(p, seen, batch)[0])(params)
      updates, opt = tx.update(grads, opt, params)
      return optax.apply_updates(params, updates), opt

    params, _ = jax.lax.fori_loop(0, STEPS, step, (params, tx.init(params)))
    return loss_fn(params, seen, batch)[1]

  return fit


def _fit(model_config: dict, kind: str, zero_inputs: bool) -> float:
  """Adam for STEPS full-batch steps -> the task's main accuracy on the training set."""
  info = Info(kind=kind, num_classes=2 if kind == "retrieval" else 3)
  model = models.build({k: v for k, v in model_config.items() if k != "num_classes"}, info)
  batch = {k: jnp.asarray(v, jnp.int32) for k, v in _task(kind).items()}
  seen = dict(batch)
  if zero_inputs:  # the model sees padding only; the labels stay
    seen.update({k: jnp.zeros_like(v) for k, v in batch.items() if k.startswith("inputs")})
  params = jax.jit(model.init)(jax.random.key(0), seen)["params"]
  predicted = np.asarray(jnp.argmax(_fitter(model, kind)(params, seen, batch), -1))
  if kind == "seq2seq":
    return float(np.mean(np.all(predicted == np.asarray(batch["targets"]), -1)))
  if kind == "lm":  # the repeated half is predictable from the first half (logit t -> token t)
    return float(np.mean(predicted[:, 3:] == np.asarray(batch["inputs"])[:, 3:]))
  return float(np.mean(predicted == np.asarray(batch["label"])))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_fits_a_tiny_task_only_from_its_inputs(family):
  kind, config = FAMILIES[family]
  fitted = _fit(config, kind, zero_inputs=False)
  blind = _fit(config, kind, zero_inputs=True)
  assert fitted >= 0.9, f"{family} reached {fitted:.2f} on its training set"
  assert blind <= 0.65, f"{family} reached {blind:.2f} without seeing its inputs"
