"""RNN encoder-decoder: stepping equals the scanned pass, state carrying, bidirectionality."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from input_pipeline.base import TaskInfo
from models import attention
from models.attention import masks
from models.attention.base import KeysValues
from models.layers import freeze_mapping
from models.rnn import DecoderCell, RNNConfig, RNNSeq2Seq, carry_from_hidden

jax.config.update("jax_disable_most_optimizations", True)


Info = functools.partial(
  TaskInfo, kind="seq2seq", vocab_size=11, max_input_length=6, max_target_length=5, eos_id=1
)


BATCH = {
  "inputs": jnp.array([[3, 4, 5, 6, 0, 0], [3, 4, 5, 6, 7, 8]], jnp.int32),
  "targets": jnp.array([[5, 6, 7, 1, 0], [5, 6, 7, 8, 1]], jnp.int32),
}


def rnn_config(**kw) -> dict:
  cfg = dict(
    name="rnn_seq2seq",
    emb_dim=8,
    hidden_dim=6,
    dropout_rate=0.2,  # off at eval: stepping must still match
    attention={"name": "scaled_dot", "num_heads": 2, "qkv_features": 8},
  )
  cfg.update(kw)
  return cfg


VARIANTS = {
  "lstm-luong-feed-2layers": rnn_config(cell="lstm", attention_placement="luong", num_layers=2),
  "gru-bahdanau-location_sensitive": rnn_config(
    cell="gru",
    attention_placement="bahdanau",
    attention={"name": "location_sensitive"},
    logits_via_embedding=True,
  ),
  "simple-none-unidirectional": rnn_config(
    cell="simple", attention_placement="none", bidirectional=False, share_embeddings=True
  ),
}


def run_steps(model, params, memory, tokens, reset_state=False):
  step = jax.jit(lambda m, s, t: model.apply(params, m, s, t, method=RNNSeq2Seq.decode_step))
  state, out = None, []
  for t in range(tokens.shape[1]):
    if reset_state and state is not None:
      state = {**state, "attention_state": {}}
    logits, state = step(memory, state, tokens[:, t])
    out.append(logits)
  return jnp.stack(out, axis=1)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_stepwise_decoding_equals_scanned_forward(variant):
  model = models.build(VARIANTS[variant], Info())
  params = {"params": jax.jit(model.init)(jax.random.key(0), BATCH)["params"]}
  full = jax.jit(model.apply)(params, BATCH)
  memory = jax.jit(lambda x: model.apply(params, x, method=RNNSeq2Seq.encode))(BATCH["inputs"])
  shifted = jnp.pad(BATCH["targets"], ((0, 0), (1, 0)))[:, :-1]
  stepped = run_steps(model, params, memory, shifted)
  np.testing.assert_allclose(stepped, full, atol=1e-5, rtol=1e-5)
  if "location_sensitive" in variant:  # the previous alignment matters
    forgetful = run_steps(model, params, memory, shifted, reset_state=True)
    assert not np.allclose(forgetful[:, 1:], full[:, 1:], atol=1e-4)


@pytest.mark.parametrize("attention_name", ["additive", "location_sensitive", "scaled_dot"])
def test_decoder_steps_reuse_the_keys_prepared_once(attention_name):
  """`encode` prepares the encoder outputs for the attention (their projections); a decoding
  step then projects only its query."""
  cfg = rnn_config(attention={"name": attention_name}, attention_placement="bahdanau")
  model = models.build(cfg, Info())
  params = {"params": jax.jit(model.init)(jax.random.key(0), BATCH)["params"]}
  memory = model.apply(params, BATCH["inputs"], method=RNNSeq2Seq.encode)
  assert isinstance(memory["keys"], KeysValues)
  projected = []

  def spy(next_fun, args, kwargs, context):
    if context.method_name == "dense_heads":
      projected.append(args[1] if len(args) > 1 else kwargs["name"])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(spy):
    model.apply(params, memory, None, BATCH["targets"][:, 0], method=RNNSeq2Seq.decode_step)
  assert projected == ["query"]


@pytest.mark.parametrize("bidirectional", [True, False])
def test_bidirectional_encoder_sees_both_directions(bidirectional):
  model = models.build(rnn_config(bidirectional=bidirectional), Info())
  params = {"params": jax.jit(model.init)(jax.random.key(0), BATCH)["params"]}
  encode = jax.jit(lambda x: model.apply(params, x, method=RNNSeq2Seq.encode)["encoded"])
  inputs = BATCH["inputs"]
  base = encode(inputs)
  last = encode(inputs.at[1, 5].set(2))  # perturb the last token of row 1
  first = encode(inputs.at[1, 0].set(2))  # perturb the first token
  assert not np.allclose(first[1, 5], base[1, 5])  # the forward direction carries it right
  sees_future = not np.allclose(last[1, 0], base[1, 0])
  assert sees_future == bidirectional
  np.testing.assert_allclose(last[0], base[0])  # other rows untouched
  assert np.all(base[0, 4:] == 0)  # padded positions are zero


CROSS_TYPES = sorted(n for n, c in attention.REGISTRY.items() if c.supports_cross)


@pytest.mark.parametrize("attention_name", CROSS_TYPES)
def test_attention_type_steps_in_rnn_decoder(attention_name):
  """Every cross-attention type works step-wise (query [B, 1, H]) with its state carried."""
  cfg = RNNConfig(
    vocab_size=11,
    output_vocab_size=11,
    emb_dim=8,
    hidden_dim=6,
    attention_placement="bahdanau",
    attention=freeze_mapping({"name": attention_name, "num_heads": 2, "qkv_features": 8}),
  )
  cell = DecoderCell(cfg)
  rng = np.random.default_rng(0)
  encoded = jnp.asarray(rng.normal(size=(2, 5, 12)), jnp.float32)
  mask = masks.padding_mask(None, jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool))
  carry = {"layers": (carry_from_hidden("lstm", jnp.zeros((2, 6))),), "feed": jnp.ones((2, 6))}
  emb = jnp.asarray(rng.normal(size=(3, 2, 8)), jnp.float32)
  variables = jax.jit(cell.init)(
    {"params": jax.random.key(0), "attention": jax.random.key(1)}, carry, emb[0], encoded, mask
  )

  def run(params):
    state, c, outs = {}, carry, []
    for t in range(3):
      (c, out), mutated = cell.apply(
        {"params": params, **({"attention_state": state} if state else {})},
        c,
        emb[t],
        encoded,
        mask,
        rngs={"attention": jax.random.key(1)},
        mutable=["attention_state"],
      )
      state = mutated.get("attention_state", {})
      outs.append(out)
    return jnp.stack(outs, 1)

  def loss(params):
    outs = run(params)
    return outs.sum(), outs

  (_, outs), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  assert outs.shape == (2, 3, 6) and np.isfinite(outs).all()
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_packed_batches_are_rejected():
  model = models.build(rnn_config(), Info())
  batch = {**BATCH, "inputs_segmentation": (BATCH["inputs"] > 0).astype(jnp.int32)}
  with pytest.raises(ValueError, match="packed"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), batch))


def attention_params(model_config: dict) -> dict:
  model = models.build(model_config, Info())
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), BATCH))["params"]
  return jax.tree.map(lambda x: x.shape, nn.unbox(shapes))["cell"]["attention"]


def test_classic_attention_gets_its_papers_shape():
  """Bahdanau's additive attention: one head of the decoder's width (hidden 6), whatever the
  Transformer fields say; `config.model.attention` may ask for another shape explicitly."""
  transformer_fields = {"num_heads": 8, "qkv_dim": 512}  # as configs/translation.py sets them
  cfg = rnn_config(attention={"name": "additive"}, attention_placement="bahdanau")
  params = attention_params({**cfg, **transformer_fields})
  assert params["query"]["kernel"] == (6, 1, 6)  # query: s_{t-1} [B, 6]
  assert params["key"]["kernel"] == (12, 1, 6)  # keys: the bidirectional encoder [B, S, 2·6]
  assert params["energy"] == (1, 6)
  explicit = {"name": "additive", "num_heads": 2, "qkv_features": 8}
  params = attention_params({**cfg, **transformer_fields, "attention": explicit})
  assert params["query"]["kernel"] == (6, 2, 4) and params["energy"] == (2, 4)
  with pytest.raises(ValueError, match="num_heads=4 must divide qkv_features=6"):
    models.check({**cfg, "attention": {"name": "additive", "num_heads": 4}}, Info())
