"""Every model family builds and trains one step; every attention type in the roles it fits.

By default each attention type runs in the most demanding Transformer family it fits (the
encoder/decoder blocks are shared by all of them), each long-range type in every family that
accepts it, and every family runs with `scaled_dot`; `MODELS_FULL_MATRIX=1` runs every family
with every fitting attention type.
"""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from configs.common import LONG_RANGE_TYPES
from input_pipeline.base import TaskInfo
from models import attention

jax.config.update("jax_disable_most_optimizations", True)

KINDS = {
  "transformer": "seq2seq",
  "rnn_seq2seq": "seq2seq",
  "decoder_lm": "lm",
  "encoder_classifier": "classification",
  "dual_encoder": "retrieval",
}
LOGICAL_AXES = {"embed", "mlp", "heads", "kv", "vocab", "length", None}


Info = functools.partial(
  TaskInfo,
  kind="seq2seq",
  vocab_size=11,
  target_vocab_size=None,
  num_classes=3,
  max_input_length=6,
  max_target_length=5,
  eos_id=1,
)


def tiny(name: str, attention_name: str = "scaled_dot", **kw) -> dict:
  cfg = dict(
    name=name,
    emb_dim=8,
    qkv_dim=8,
    mlp_dim=16,
    num_heads=2,
    num_encoder_layers=1,
    num_decoder_layers=1,
    max_len=8,
    hidden_dim=8,
    dropout_rate=0.1,
    attention_dropout_rate=0.1,
    attention={"name": attention_name},
  )
  cfg.update(kw)
  return cfg


def batch_for(kind: str) -> dict[str, jnp.ndarray]:
  inputs = jnp.array([[3, 4, 5, 6, 0, 0], [3, 4, 5, 6, 7, 8]], jnp.int32)
  batch = {"inputs": inputs}
  if kind == "seq2seq":
    batch["targets"] = jnp.array([[5, 6, 7, 1, 0], [5, 6, 7, 8, 1]], jnp.int32)
  if kind in ("classification", "retrieval"):
    batch["label"] = jnp.array([0, 2], jnp.int32)
  if kind == "retrieval":
    batch["inputs2"] = jnp.array([[9, 4, 0, 0, 0, 0], [3, 4, 5, 2, 7, 8]], jnp.int32)
  return batch


def labels_of(kind, batch):
  return {"seq2seq": "targets", "lm": "inputs"}.get(kind, "label")


def train_step(model_config: dict, kind: str):
  """Init + one loss/grad; returns (loss, grads, logits, logits with input token 1 changed)."""
  info = Info(kind=kind)
  model = models.build(model_config, info)
  batch = batch_for(kind)
  changed = {**batch, "inputs": batch["inputs"].at[:, 1].set(9)}  # valid in both rows
  labels = batch[labels_of(kind, batch)]
  rngs = {"dropout": jax.random.key(1), "attention": jax.random.key(2)}

  def step(rng):
    variables = model.init({"params": rng, **rngs}, batch, train=False)

    def loss_fn(params):
      logits = model.apply({"params": params}, batch, train=True, rngs=rngs)
      logp = jax.nn.log_softmax(logits)
      return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], -1)), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    other = model.apply(variables, changed, train=True, rngs=rngs)
    return loss, grads, logits, other

  loss, grads, logits, other = jax.jit(step)(jax.random.key(0))
  return loss, grads, logits, other, info


def assert_trains(model_config: dict, kind: str):
  """One step is finite, every parameter leaf is finite, the logits have the task's shape, and
  they read the inputs (a changed input token changes them; for lm, the positions after it)."""
  loss, grads, logits, other, info = train_step(model_config, kind)
  assert np.isfinite(float(loss))
  leaves = jax.tree.leaves(nn.unbox(grads))
  assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
  assert sum(bool(np.any(np.asarray(g) != 0)) for g in leaves) > len(leaves) // 2
  if kind in ("seq2seq", "lm"):
    assert logits.shape[-1] == info.vocab_size
  else:
    assert logits.shape == (2, info.num_classes)
  start = 2 if kind == "lm" else 0  # lm logits at t read the inputs before t
  for row in range(2):
    assert not np.allclose(logits[row, start:], other[row, start:], atol=1e-6), row


def fits(family: str, attention_name: str) -> bool:
  cls = attention.get(attention_name)
  needs = {
    "transformer": cls.supports_causal and cls.supports_cross,
    "rnn_seq2seq": cls.supports_cross,
    "decoder_lm": cls.supports_causal,
  }
  return needs.get(family, True)


def hardest_family(attention_name: str) -> str:
  for family in ("transformer", "decoder_lm", "encoder_classifier"):
    if fits(family, attention_name):
      return family
  raise AssertionError("unreachable")


@pytest.mark.parametrize("attention_name", sorted(attention.REGISTRY))
def test_attention_type_trains_in_transformer_roles(attention_name):
  family = hardest_family(attention_name)
  # No dropout here (it doubles compile time; attention dropout is tested per type elsewhere).
  config = tiny(family, attention_name, dropout_rate=0.0, attention_dropout_rate=0.0)
  assert_trains(config, KINDS[family])


FAMILY_VARIANTS = {
  "transformer-separate-untied": tiny(
    "transformer", share_embeddings=False, logits_via_embedding=False, position="learned"
  ),
  "decoder_lm-rotary": tiny("decoder_lm", position="rotary"),
  "encoder_classifier-cls": tiny("encoder_classifier", pooling="cls"),
  "encoder_classifier-rnn-gru-mean": tiny(
    "encoder_classifier", encoder="rnn", cell="gru", pooling="mean", num_layers=2
  ),
  "dual_encoder-max": tiny("dual_encoder", pooling="max"),
  "rnn_seq2seq-bahdanau-gru": tiny("rnn_seq2seq", cell="gru", attention_placement="bahdanau"),
}


@pytest.mark.parametrize("variant", sorted(FAMILY_VARIANTS))
def test_family_trains(variant):
  config = FAMILY_VARIANTS[variant]
  assert_trains(config, KINDS[config["name"]])


def test_every_family_is_covered():
  assert set(models.REGISTRY) <= {c["name"] for c in FAMILY_VARIANTS.values()}
  for name, cls in models.REGISTRY.items():
    assert KINDS[name] in cls.task_kinds


FULL_MATRIX = bool(os.environ.get("MODELS_FULL_MATRIX"))


@pytest.mark.parametrize("family", sorted(KINDS))
@pytest.mark.parametrize("attention_name", sorted(attention.REGISTRY))
def test_every_long_range_type_in_every_family(family, attention_name):
  """By default each long-range type (`configs.common.LONG_RANGE_TYPES`) in every family that
  accepts it, without dropout (dropout is tested per type in test_dropout.py); the other types
  run in their hardest family above. `MODELS_FULL_MATRIX=1`: every type, with dropout."""
  if not fits(family, attention_name):
    pytest.skip(f"{attention_name} does not fit {family}")
  if not FULL_MATRIX:
    if attention_name not in LONG_RANGE_TYPES:
      pytest.skip("not a long-range type; set MODELS_FULL_MATRIX=1")
    if family == hardest_family(attention_name):
      pytest.skip("run by test_attention_type_trains_in_transformer_roles")
  rate = 0.1 if FULL_MATRIX else 0.0
  config = tiny(family, attention_name, dropout_rate=rate, attention_dropout_rate=rate)
  assert_trains(config, KINDS[family])


@pytest.mark.parametrize("family", sorted(KINDS))
def test_parameters_carry_logical_axis_names(family):
  kind = KINDS[family]
  model = models.build(tiny(family), Info(kind=kind))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), batch_for(kind)))["params"]
  boxed = jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  named = [x for x in boxed if isinstance(x, nn.LogicallyPartitioned)]
  assert named, "no logically partitioned parameters"
  for x in named:
    assert set(x.names) <= LOGICAL_AXES, x.names
    assert len([n for n in x.names if n]) == len({n for n in x.names if n})
  nn.get_partition_spec(shapes)  # does not raise


def test_decoder_lm_is_causal():
  model = models.build(tiny("decoder_lm", dropout_rate=0.0), Info(kind="lm"))
  batch = batch_for("lm")
  variables = jax.jit(model.init)(jax.random.key(0), batch)
  changed = {"inputs": batch["inputs"].at[:, 2].set(9)}
  apply = jax.jit(model.apply)
  a, b = apply(variables, batch), apply(variables, changed)
  np.testing.assert_allclose(a[:, :3], b[:, :3], atol=1e-5)  # logits t see inputs < t
  assert not np.allclose(a[:, 3], b[:, 3])


# ----------------------------------------------------------------------------- config checks


def test_unknown_family_lists_valid_names():
  with pytest.raises(ValueError, match="valid: .*transformer"):
    models.check(tiny("nope"), Info())


@pytest.mark.parametrize("family", sorted(KINDS))
def test_wrong_task_kind(family):
  wrong = "lm" if KINDS[family] != "lm" else "seq2seq"
  with pytest.raises(ValueError, match="fits task kinds"):
    models.check(tiny(family), Info(kind=wrong))


@pytest.mark.parametrize(
  "family,flag,message",
  [
    ("transformer", "supports_causal", "causal"),
    ("decoder_lm", "supports_causal", "causal"),
    ("transformer", "supports_cross", "cross"),
    ("rnn_seq2seq", "supports_cross", "cross"),
  ],
)
def test_unfit_attention_is_rejected(monkeypatch, family, flag, message):
  monkeypatch.setattr(attention.get("scaled_dot"), flag, False)
  with pytest.raises(ValueError, match=message):
    models.check(tiny(family), Info(kind=KINDS[family]))


def test_encoder_only_family_accepts_non_causal_attention(monkeypatch):
  monkeypatch.setattr(attention.get("scaled_dot"), "supports_causal", False)
  monkeypatch.setattr(attention.get("scaled_dot"), "supports_cross", False)
  models.check(tiny("encoder_classifier"), Info(kind="classification"))


def test_packing_rejected_for_key_padding_only_types(monkeypatch):
  monkeypatch.setattr(attention.get("scaled_dot"), "dense_mask", False)
  model = models.build(tiny("transformer"), Info())
  batch = batch_for("seq2seq")
  batch.update(
    inputs_segmentation=(batch["inputs"] > 0).astype(jnp.int32),
    targets_segmentation=(batch["targets"] > 0).astype(jnp.int32),
  )
  with pytest.raises(ValueError, match="packed"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), batch))


@pytest.mark.parametrize(
  "family,override,message",
  [
    ("encoder_classifier", {"pooling": "sum"}, "pooling"),
    ("encoder_classifier", {"encoder": "cnn"}, "encoder"),
    ("encoder_classifier", {"max_len": 6}, "max_len"),  # + [CLS]
    ("rnn_seq2seq", {"cell": "tree"}, "cell"),
    ("rnn_seq2seq", {"attention_placement": "middle"}, "attention_placement"),
    ("rnn_seq2seq", {"attention": {"name": "scaled_dot", "num_heads": 3}}, "num_heads"),
    ("decoder_lm", {"qkv_dim": 6, "num_heads": 4}, "must divide"),
  ],
)
def test_family_config_errors(family, override, message):
  with pytest.raises(ValueError, match=message):
    models.check(tiny(family, **override), Info(kind=KINDS[family]))


def test_classifier_needs_classes():
  with pytest.raises(ValueError, match="num_classes"):
    models.check(tiny("encoder_classifier"), Info(kind="classification", num_classes=None))


def test_rotary_needs_the_shared_projections():
  from models.layers import rotary_supported

  assert rotary_supported(attention.get("scaled_dot"), {"name": "scaled_dot"})
  unfit = [
    n for n in sorted(attention.REGISTRY) if not rotary_supported(attention.get(n), {"name": n})
  ]
  if not unfit:
    pytest.skip("every registered type projects with Attention.dense_heads")
  with pytest.raises(ValueError, match="rotary"):
    models.check(tiny("transformer", unfit[0], position="rotary"), Info())


def test_supports_packing():
  assert models.supports_packing(tiny("transformer"))
  assert models.supports_packing(tiny("decoder_lm"))
  assert not models.supports_packing(tiny("rnn_seq2seq"))
  assert not models.supports_packing(tiny("encoder_classifier"))
