"""Transformer encoder-decoder: train step, cached decoding, packing, config checks, size."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from input_pipeline.base import TaskInfo
from models.transformer import Transformer

jax.config.update("jax_disable_most_optimizations", True)


Info = functools.partial(
  TaskInfo,
  kind="seq2seq",
  vocab_size=13,
  target_vocab_size=None,
  num_classes=None,
  max_input_length=8,
  max_target_length=8,
  eos_id=1,
)


def model_config(**kw):
  cfg = dict(
    name="transformer",
    emb_dim=16,
    num_heads=2,
    num_encoder_layers=1,
    num_decoder_layers=2,
    qkv_dim=16,
    mlp_dim=32,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
    max_len=16,
    position="sinusoidal",
    norm="pre",
    share_embeddings=True,
    logits_via_embedding=True,
    dtype="float32",
    attention={"name": "scaled_dot", "implementation": "xla"},
  )
  cfg.update(kw)
  return cfg


def random_batch(seed=0, b=2, s=7, t=6, vocab=13):
  rng = np.random.default_rng(seed)
  inputs = rng.integers(2, vocab, (b, s))
  targets = rng.integers(2, vocab, (b, t))
  inputs[0, -2:] = 0  # padding
  targets[0, -2:] = 0
  targets[:, -1 if targets[1, -1] else -3] = 1
  return {"inputs": jnp.asarray(inputs, jnp.int32), "targets": jnp.asarray(targets, jnp.int32)}


def test_train_step_loss_and_grad():
  model = models.build(
    model_config(dropout_rate=0.1, attention_dropout_rate=0.1, num_decoder_layers=1), Info()
  )
  batch = random_batch()
  variables = jax.jit(model.init)(jax.random.key(0), batch)

  def loss_fn(params):
    logits = model.apply({"params": params}, batch, train=True, rngs={"dropout": jax.random.key(1)})
    labels = jax.nn.one_hot(batch["targets"], logits.shape[-1])
    return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), -1))

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables["params"])
  assert np.isfinite(float(loss))
  norms = jax.tree.leaves(jax.tree.map(lambda g: jnp.abs(g).sum(), grads))
  assert all(np.isfinite(float(n)) for n in norms)
  assert jax.eval_shape(model.apply, variables, batch).shape == (2, 6, 13)


@pytest.mark.parametrize(
  "position,norm,share,tied",
  [
    ("sinusoidal", "pre", True, True),
    ("learned", "post", False, False),
    ("rotary", "pre", False, True),
  ],
)
def test_cached_decoding_matches_full_forward(position, norm, share, tied):
  info = Info(target_vocab_size=11)
  model = models.build(
    model_config(position=position, norm=norm, share_embeddings=share, logits_via_embedding=tied),
    info,
  )
  batch = random_batch(t=6, vocab=11)
  params = jax.jit(model.init)(jax.random.key(0), batch)["params"]
  full = jax.jit(model.apply)({"params": params}, batch)

  decoder = Transformer(model.config.replace(decode=True))
  encoded = jax.jit(lambda x: model.apply({"params": params}, x, method=Transformer.encode))(
    batch["inputs"]
  )
  cache = jax.eval_shape(
    lambda: decoder.init(
      jax.random.key(0), encoded, batch["inputs"], batch["targets"], method=Transformer.decode
    )["cache"]
  )
  cache = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), cache)  # a fresh cache is zeros
  shifted = jnp.pad(batch["targets"], ((0, 0), (1, 0)))[:, :-1]
  decode = jax.jit(
    lambda cache, token: decoder.apply(
      {"params": params, "cache": cache},
      encoded,
      batch["inputs"],
      token,
      method=Transformer.decode,
      mutable=["cache"],
    )
  )
  for t in range(batch["targets"].shape[1]):
    step, mutated = decode(cache, shifted[:, t : t + 1])
    cache = mutated["cache"]
    # Row 0 is padded after position 3; its padded positions differ (masked queries), skip them.
    rows = slice(None) if t < 4 else slice(1, None)
    np.testing.assert_allclose(step[rows, 0], full[rows, t], atol=1e-4, rtol=1e-4)


def test_packing_keeps_segments_apart():
  model = models.build(model_config(position="learned"), Info())
  rng = np.random.default_rng(1)
  a_in, b_in = rng.integers(2, 13, 3), rng.integers(2, 13, 4)
  a_tg, b_tg = rng.integers(2, 13, 2), rng.integers(2, 13, 3)
  packed = {
    "inputs": np.concatenate([a_in, b_in])[None],
    "inputs_segmentation": np.array([[1] * 3 + [2] * 4]),
    "inputs_position": np.array([list(range(3)) + list(range(4))]),
    "targets": np.concatenate([a_tg, b_tg, [0]])[None],
    "targets_segmentation": np.array([[1] * 2 + [2] * 3 + [0]]),
    "targets_position": np.array([list(range(2)) + list(range(3)) + [0]]),
  }
  packed = {k: jnp.asarray(v, jnp.int32) for k, v in packed.items()}
  params = jax.jit(model.init)(jax.random.key(0), packed)["params"]
  apply = jax.jit(model.apply)
  logits = apply({"params": params}, packed)
  alone_a = apply({"params": params}, {"inputs": a_in[None], "targets": a_tg[None]})
  alone_b = apply({"params": params}, {"inputs": b_in[None], "targets": b_tg[None]})
  np.testing.assert_allclose(logits[0, :2], alone_a[0], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(logits[0, 2:5], alone_b[0], atol=1e-4, rtol=1e-4)


def test_bfloat16_compute_keeps_float32_params():
  model = models.build(model_config(dtype="bfloat16"), Info())
  batch = random_batch()
  variables = jax.eval_shape(model.init, jax.random.key(0), batch)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.unbox(variables)))
  assert jax.eval_shape(model.apply, variables, batch).dtype == jnp.float32


@pytest.mark.parametrize(
  "override,message",
  [
    ({"num_heads": 3}, "must divide"),
    ({"max_len": 4}, "max_len"),
    ({"name": "nope"}, "valid: "),
    ({"position": "alibi"}, "position"),
    ({"norm": "mid"}, "norm"),
    ({"bogus_field": 1}, "unknown field"),
  ],
)
def test_check_rejects_bad_configs(override, message):
  with pytest.raises(ValueError, match=message):
    models.check(model_config(**override), Info())


def test_sparse_self_attention_with_dense_cross_attention():
  """`cross_attention` names the decoder's cross attention type (Longformer-Encoder-Decoder
  style): self-attention is banded (window 1), cross attention exact, so the logits equal a
  model whose self-attention is scaled_dot under the same band mask."""
  fields = {"name": "sliding_window", "window": 1, "implementation": "xla"}
  with pytest.raises(ValueError, match="cross_attention=scaled_dot"):
    models.check(model_config(attention=fields), Info())
  model = models.build(model_config(attention=fields, cross_attention="scaled_dot"), Info())
  batch = random_batch()
  variables = jax.jit(model.init)(jax.random.key(0), batch)
  logits, state = jax.jit(lambda v: model.apply(v, batch, mutable=["intermediates"]))(variables)
  weights = state["intermediates"]["decoder"]["decoderblock_0"]
  self_w = weights["self_attention"]["attention_weights"][0]
  cross_w = weights["cross_attention"]["attention_weights"][0]
  t, s = batch["targets"].shape[1], batch["inputs"].shape[1]
  assert self_w.shape == (2, 2, t, t) and cross_w.shape == (2, 2, t, s)
  i, j = np.arange(t)[:, None], np.arange(t)[None, :]
  assert np.all(np.asarray(self_w)[..., (i - j > 1) | (j > i)] == 0)  # causal band of 1
  assert np.all(np.asarray(cross_w)[1] > 0)  # every source position (row 1 has no padding)
  assert np.isfinite(np.asarray(logits)).all()


def test_check_rejects_wrong_task_kind():
  with pytest.raises(ValueError, match="fits task kinds"):
    models.check(model_config(), Info(kind="classification"))


def test_transformer_base_parameter_count():
  """Vaswani et al. base: d=512, 8 heads, 6+6 layers, mlp 2048, 32000 shared vocab."""
  d, f, v, n = 512, 2048, 32000, 6
  info = Info(vocab_size=v, max_input_length=256, max_target_length=256)
  cfg = model_config(
    emb_dim=d,
    qkv_dim=d,
    num_heads=8,
    mlp_dim=f,
    num_encoder_layers=n,
    num_decoder_layers=n,
    max_len=256,
    share_embeddings=True,
    logits_via_embedding=True,
  )
  model = models.build(cfg, info)
  batch = {"inputs": jnp.ones((1, 8), jnp.int32), "targets": jnp.ones((1, 8), jnp.int32)}
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), batch))["params"]
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes)))
  attention = 4 * (d * d + d)  # q, k, v, out with biases
  mlp = d * f + f + f * d + d
  ln = 2 * d
  encoder = n * (attention + mlp + 2 * ln) + ln
  decoder = n * (2 * attention + mlp + 3 * ln) + ln
  assert count == v * d + encoder + decoder  # 44.1M (+ biases/norms vs the paper's 65M w/o tying)


def test_attention_shape_fields_override_the_model_fields():
  """`config.model.attention.num_heads` / `qkv_features` win over `num_heads` / `qkv_dim`."""
  attention = {"name": "scaled_dot", "implementation": "xla", "num_heads": 4, "qkv_features": 8}
  model = models.build(model_config(attention=attention), Info())
  batch = random_batch()
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), batch))["params"]
  block = nn.unbox(shapes)["encoder"]["encoderblock_0"]["self_attention"]
  assert block["query"]["kernel"].shape == (16, 4, 2)
  with pytest.raises(ValueError, match="must divide"):
    models.check(model_config(attention={"name": "scaled_dot", "num_heads": 3}), Info())
