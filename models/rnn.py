"""RNN encoder-decoder with attention (`rnn_seq2seq`), and the RNN encoder shared with classifiers.

Encoder: embeddings -> `num_layers` (bidirectional) RNN layers over the valid tokens; a bridge
`tanh(W [h_fwd; h_bwd])` turns its final state into the decoder's initial state (every layer).

Decoder step t (cell `simple` | `lstm` | `gru`, `num_layers` stacked), with y_{t-1} the previous
target token (0 = BOS) and E its embedding; `attention_placement`:

* `bahdanau` (Bahdanau et al. 2015): attend with the previous top state s_{t-1},
  c_t = Attn(s_{t-1}, enc);  s_t = RNN([E(y_{t-1}); c_t], s_{t-1});  o_t = tanh(W_o [s_t; c_t]).
* `luong` (Luong et al. 2015): attend with the current state,
  s_t = RNN([E(y_{t-1}); h̃_{t-1}] with `input_feeding`, else E(y_{t-1}));  c_t = Attn(s_t, enc);
  h̃_t = tanh(W_c [c_t; s_t]) = o_t.
* `none`: o_t = s_t (no attention).

logits_t = W_s o_t (or E^T P o_t with `logits_via_embedding`).

The attention is any registered type that supports cross attention, called step-wise with a query
`[B, 1, H]` and keys/values = the encoder outputs, prepared once per source sequence
(`Attention.prepare` in `encode`: their projections), so a step projects only its query.
Recurrence runs in `jax.lax.scan`; each step applies the cell functionally (`DecoderCell.apply`)
with the `attention_state` collection carried explicitly, so stateful types (location-sensitive)
see their previous alignment whether or not the caller made that collection mutable. The same
step function drives the scanned teacher-forced pass and the step-by-step decoding in
`models/decoding.py`.
"""

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import attention as attention_lib
from models.attention import masks
from models.decoding import StepFn, expand
from models.layers import check_attention_roles, config_from, dtype_of, embed_module, shift_right
from models.registry import register

CELLS = {"simple": nn.SimpleCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}
PLACEMENTS = ("bahdanau", "luong", "none")
PACKING_KEYS = ("inputs_segmentation", "targets_segmentation")


def make_cell(kind: str, features: int, dtype: Any, name: str | None = None) -> nn.RNNCellBase:
  if kind not in CELLS:
    raise ValueError(f"cell={kind!r}; valid: {', '.join(CELLS)}")
  return CELLS[kind](
    features=features,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
    recurrent_kernel_init=nn.with_logical_partitioning(nn.initializers.orthogonal(), (None, "mlp")),
    name=name,
  )


def carry_hidden(kind: str, carry: Any) -> jnp.ndarray:
  """The hidden state `[B, H]` of a cell carry (LSTM carries `(c, h)`)."""
  return carry[1] if kind == "lstm" else carry


def carry_from_hidden(kind: str, h: jnp.ndarray) -> Any:
  return (jnp.zeros_like(h), h) if kind == "lstm" else h


def dense(features: int, dtype: Any, axes: tuple[str | None, str | None], name: str, **kw: Any):
  return nn.Dense(
    features,
    dtype=dtype,
    kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), axes),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
    name=name,
    **kw,
  )


class RNNEncoder(nn.Module):
  """Embedded `[B, S, E]` + validity `[B, S]` -> outputs `[B, S, H·dirs]`, final `[B, H·dirs]`.

  Padding must be at the end of each row (lengths = number of valid tokens).
  """

  cell: str = "lstm"
  hidden_dim: int = 64
  num_layers: int = 1
  bidirectional: bool = True
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, valid: jnp.ndarray, deterministic: bool = True):
    lengths = valid.astype(jnp.int32).sum(-1)
    final = None
    for i in range(self.num_layers):
      if i:
        x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
      forward = nn.RNN(make_cell(self.cell, self.hidden_dim, self.dtype), name=f"forward_{i}")
      if self.bidirectional:
        backward = nn.RNN(make_cell(self.cell, self.hidden_dim, self.dtype), name=f"backward_{i}")
        (c_fwd, c_bwd), x = nn.Bidirectional(forward, backward, return_carry=True)(
          x, seq_lengths=lengths
        )
        final = jnp.concatenate(
          [carry_hidden(self.cell, c_fwd), carry_hidden(self.cell, c_bwd)], axis=-1
        )
      else:
        carry, x = forward(x, seq_lengths=lengths, return_carry=True)
        final = carry_hidden(self.cell, carry)
      x = jnp.where(valid[..., None], x, 0)
    return x, final


@dataclasses.dataclass(frozen=True)
class RNNConfig:
  """`rnn_seq2seq` hyperparameters (field names shared with the Transformer where they agree)."""

  vocab_size: int = 32
  output_vocab_size: int = 32
  emb_dim: int = 64
  hidden_dim: int = 0  # RNN width; 0: = emb_dim
  cell: str = "lstm"  # simple | lstm | gru
  num_layers: int = 1  # encoder and decoder layers
  bidirectional: bool = True  # encoder
  attention_placement: str = "luong"  # bahdanau | luong | none
  input_feeding: bool = True  # luong: feed h̃_{t-1} into the next step
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  share_embeddings: bool = False
  logits_via_embedding: bool = False
  dtype: str = "float32"
  attention: tuple[tuple[str, Any], ...] = (("name", "scaled_dot"),)

  def replace(self, **kw: Any) -> "RNNConfig":
    return dataclasses.replace(self, **kw)

  @property
  def hidden(self) -> int:
    return self.hidden_dim or self.emb_dim

  @property
  def compute_dtype(self) -> Any:
    return dtype_of(self.dtype)

  @property
  def attention_shape(self) -> tuple[int, int]:
    """(heads, qkv width) the RNN gives its attention: the papers' single head of the decoder's
    width (Bahdanau et al. 2015, Luong et al. 2015, Chorowski et al. 2015), for every type,
    unless `config.model.attention` sets `num_heads` / `qkv_features` explicitly (the
    Transformer's `num_heads` / `qkv_dim` are not read)."""
    explicit = attention_lib.shape_fields(self.attention)
    return explicit.get("num_heads", 1), explicit.get("qkv_features") or self.hidden


def make_attention(cfg: RNNConfig, **kw: Any) -> attention_lib.Attention:
  """The decoder's attention over the encoder outputs (queries: the decoder state `[B, 1, H]`)."""
  heads, qkv = cfg.attention_shape
  return attention_lib.build(dict(cfg.attention))(
    num_heads=heads,
    qkv_features=qkv,
    out_features=cfg.hidden,
    causal=False,
    dropout_rate=cfg.attention_dropout_rate,
    dtype=cfg.compute_dtype,
    param_dtype=jnp.float32,
    **kw,
  )


class DecoderCell(nn.Module):
  """One decoder step: `(carry, E(y_{t-1}) [B, E], enc, mask) -> (carry, o_t [B, H])`.

  `enc`: the encoder outputs `[B, S, He]`, or what the attention prepared from them once per
  source sequence (`Attention.prepare`). `carry = {'layers': per-layer cell carries,
  'feed': [B, H]}` where `feed` is s_{t-1} (bahdanau) or h̃_{t-1} (luong).
  """

  config: RNNConfig

  @nn.compact
  def __call__(self, carry, emb, encoded, mask, deterministic: bool = True):
    cfg = self.config
    dt = cfg.compute_dtype
    attn = None
    if cfg.attention_placement != "none":
      attn = make_attention(cfg, name="attention")

    def attend(query):
      return attn(query[:, None], encoded, mask=mask, deterministic=deterministic)[:, 0]

    x = nn.Dropout(rate=cfg.dropout_rate)(emb.astype(dt), deterministic=deterministic)
    context = None
    if cfg.attention_placement == "bahdanau":
      context = attend(carry["feed"])
      x = jnp.concatenate([x, context.astype(dt)], axis=-1)
    elif cfg.attention_placement == "luong" and cfg.input_feeding:
      x = jnp.concatenate([x, carry["feed"].astype(dt)], axis=-1)
    layers = []
    for i, layer_carry in enumerate(carry["layers"]):
      if i:
        x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)
      new_carry, x = make_cell(cfg.cell, cfg.hidden, dt, name=f"layer_{i}")(layer_carry, x)
      layers.append(jax.tree.map(lambda n, o: n.astype(o.dtype), new_carry, layer_carry))
    state = x
    if cfg.attention_placement == "bahdanau":
      out = nn.tanh(
        dense(cfg.hidden, dt, ("mlp", "embed"), "output")(jnp.concatenate([state, context], -1))
      )
      feed = state
    elif cfg.attention_placement == "luong":
      context = attend(state)
      combine = dense(cfg.hidden, dt, ("mlp", "embed"), "combine", use_bias=False)
      out = nn.tanh(combine(jnp.concatenate([context, state], -1)))
      feed = out
    else:
      out = feed = state
    return {"layers": tuple(layers), "feed": feed.astype(carry["feed"].dtype)}, out


@register("rnn_seq2seq")
class RNNSeq2Seq(nn.Module):
  """RNN encoder-decoder with attention: `(batch, train) -> logits [B, T, target_vocab]`."""

  task_kinds: ClassVar[tuple[str, ...]] = ("seq2seq",)
  supports_packing: ClassVar[bool] = False
  config_class: ClassVar[type] = RNNConfig
  config: RNNConfig

  @classmethod
  def make_config(cls, model_config: Any, info: Any) -> RNNConfig:
    vocab = info.vocab_size
    return config_from(
      RNNConfig,
      model_config,
      vocab_size=vocab,
      output_vocab_size=getattr(info, "target_vocab_size", None) or vocab,
    )

  @classmethod
  def validate(cls, cfg: RNNConfig, info: Any) -> None:
    if cfg.cell not in CELLS:
      raise ValueError(f"cell={cfg.cell!r}; valid: {', '.join(CELLS)}")
    if cfg.attention_placement not in PLACEMENTS:
      raise ValueError(
        f"attention_placement={cfg.attention_placement!r}; valid: {', '.join(PLACEMENTS)}"
      )
    if cfg.num_layers < 1:
      raise ValueError(f"num_layers={cfg.num_layers} must be >= 1")
    if cfg.attention_placement != "none":
      heads, qkv = cfg.attention_shape
      if qkv % heads:
        raise ValueError(f"attention num_heads={heads} must divide qkv_features={qkv}")
      check_attention_roles(attention_lib.get(dict(cfg.attention)["name"]), ("cross",))

  def setup(self):
    cfg = self.config
    dt = cfg.compute_dtype
    if cfg.share_embeddings:
      shared = embed_module(max(cfg.vocab_size, cfg.output_vocab_size), cfg.emb_dim, "shared")
      self.input_embedding = self.output_embedding = shared
    else:
      self.input_embedding = embed_module(cfg.vocab_size, cfg.emb_dim, "input_embedding")
      self.output_embedding = embed_module(cfg.output_vocab_size, cfg.emb_dim, "output_embedding")
    self.encoder = RNNEncoder(
      cfg.cell, cfg.hidden, cfg.num_layers, cfg.bidirectional, cfg.dropout_rate, dt
    )
    self.bridge = dense(cfg.hidden * cfg.num_layers, dt, ("mlp", "embed"), "bridge")
    self.cell = DecoderCell(cfg)
    self.dropout = nn.Dropout(rate=cfg.dropout_rate)
    if cfg.logits_via_embedding:
      self.to_embedding = dense(cfg.emb_dim, dt, ("mlp", "embed"), "to_embedding")
    else:
      self.logits_dense = dense(cfg.output_vocab_size, jnp.float32, ("embed", "vocab"), "logits")

  # ------------------------------------------------------------------------------ encoder

  def encode(self, inputs: jnp.ndarray, train: bool = False) -> dict[str, Any]:
    """`inputs [B, S]` -> `{'encoded' [B, S, He], 'keys', 'mask' [B, 1, 1, S], 'carry'}` (the
    decoder's start; `keys`: what the attention prepared from `encoded`, once per source)."""
    cfg = self.config
    valid = inputs > 0
    x = self.input_embedding(inputs.astype(jnp.int32)).astype(cfg.compute_dtype)
    x = self.dropout(x, deterministic=not train)
    encoded, final = self.encoder(x, valid, deterministic=not train)
    h0 = jnp.tanh(self.bridge(final)).astype(jnp.float32)
    h0 = jnp.split(h0, cfg.num_layers, axis=-1)
    layers = tuple(carry_from_hidden(cfg.cell, h) for h in h0)
    feed = h0[-1] if cfg.attention_placement == "bahdanau" else jnp.zeros_like(h0[-1])
    memory = {
      "encoded": encoded,
      "mask": masks.padding_mask(None, valid),
      "carry": {"layers": layers, "feed": feed},
    }
    memory["keys"] = self._prepare(memory)
    return memory

  def _prepare(self, memory: dict[str, Any]) -> Any:
    """The attention's `prepare` of the encoder outputs, applied with the cell's parameters."""
    if self.config.attention_placement == "none":
      return memory["encoded"]
    emb0 = self.output_embedding(jnp.zeros(memory["encoded"].shape[:1], jnp.int32))
    params = self._cell_params(memory, emb0)["attention"]
    attn = make_attention(self.config, parent=None)
    return attn.apply({"params": params}, memory["encoded"], method="prepare")

  # ------------------------------------------------------------------------------ decoder

  def _cell_step(self, params, state, emb, memory, rngs, deterministic, want_weights):
    """One functional step; `state = {'carry', 'attention_state'}` -> (state, o_t, weights)."""
    variables = {"params": params}
    if state["attention_state"]:
      variables["attention_state"] = state["attention_state"]
    mutable = ["attention_state"] + (["intermediates"] if want_weights else [])
    (carry, out), mutated = DecoderCell(self.config, parent=None).apply(
      variables,
      state["carry"],
      emb,
      memory["keys"],
      memory["mask"],
      deterministic,
      rngs=rngs,
      mutable=mutable,
    )
    weights = None
    if want_weights:
      leaves = jax.tree.leaves(mutated.get("intermediates", {}))
      weights = leaves[0][:, :, 0] if leaves else None  # [B, H, S]
    return {"carry": carry, "attention_state": mutated.get("attention_state", {})}, out, weights

  def _cell_params(self, memory, emb0):
    if self.is_initializing():  # create the cell's parameters in this module's tree
      self.cell(memory["carry"], emb0, memory["encoded"], memory["mask"], True)
    return self.cell.variables["params"]

  def decode_logits(self, out: jnp.ndarray) -> jnp.ndarray:
    """Decoder outputs `[..., H]` -> logits `[..., V]` (float32)."""
    cfg = self.config
    if cfg.logits_via_embedding:
      y = self.to_embedding(out).astype(jnp.float32)
      logits = self.output_embedding.attend(y) / jnp.sqrt(cfg.emb_dim)
    else:
      logits = self.logits_dense(out)
    return logits[..., : cfg.output_vocab_size].astype(jnp.float32)

  def decode(self, memory: dict[str, Any], targets: jnp.ndarray, train: bool = False):
    """Teacher-forced decoder over `targets [B, T]` (shifted right inside) -> logits `[B, T, V]`."""
    emb = self.output_embedding(shift_right(targets).astype(jnp.int32))  # [B, T, E]
    params = self._cell_params(memory, emb[:, 0])
    want = self.is_mutable_collection("intermediates")
    steps = targets.shape[1]
    rng_keys = None
    if train:
      names = [n for n in ("dropout", "attention") if self.has_rng(n)]
      rng_keys = {n: jax.random.split(self.make_rng(n), steps) for n in names}
    start = {"carry": memory["carry"], "attention_state": {}}
    first = None if rng_keys is None else {n: k[0] for n, k in rng_keys.items()}
    state, out0, w0 = self._cell_step(params, start, emb[:, 0], memory, first, not train, want)

    def body(state, xs):
      e, keys = xs
      state, out, w = self._cell_step(params, state, e, memory, keys, not train, want)
      return state, (out, w)

    outs = out0[:, None]
    weights = None if w0 is None else w0[:, :, None]
    if steps > 1:
      rest = None if rng_keys is None else {n: k[1:] for n, k in rng_keys.items()}
      _, (more, ws) = jax.lax.scan(body, state, (jnp.moveaxis(emb[:, 1:], 1, 0), rest))
      outs = jnp.concatenate([outs, jnp.moveaxis(more, 0, 1)], axis=1)
      if weights is not None:
        weights = jnp.concatenate([weights, jnp.moveaxis(ws, 0, 2)], axis=2)
    if weights is not None:
      self.sow("intermediates", "attention_weights", weights)  # [B, H, T, S]
    return self.decode_logits(outs)

  def decode_step(
    self, memory: dict[str, Any], state: dict[str, Any] | None, tokens: jnp.ndarray
  ) -> tuple[jnp.ndarray, dict[str, Any]]:
    """One decoding step (no dropout): previous tokens `[B]` -> logits `[B, V]`, new state.

    Start with `state=None` and `tokens` = 0 (BOS); the state then holds the RNN carry and the
    `attention_state` collection.
    """
    emb = self.output_embedding(tokens.astype(jnp.int32))
    params = self._cell_params(memory, emb)
    if state is None:
      state = {"carry": memory["carry"], "attention_state": {}}
    state, out, _ = self._cell_step(params, state, emb, memory, None, True, False)
    return self.decode_logits(out), state

  @nn.nowrap
  def decoding_step(
    self, variables: Any, batch: dict[str, jnp.ndarray], max_len: int, times: int = 1
  ) -> tuple[Any, StepFn]:
    """(initial state, step) decoding `batch['inputs']` rows repeated `times` (see decoding.py):
    the encoder runs once, then `decode_step` per token (RNN carry and `attention_state`)."""
    del max_len  # the recurrence has no length limit
    params = {"params": variables["params"]}
    inputs = batch["inputs"]
    memory = self.apply(params, inputs, method=RNNSeq2Seq.encode)
    memory = expand(memory, inputs.shape[0], times)

    def step(state, tokens):
      return self.apply(params, memory, state, tokens, method=RNNSeq2Seq.decode_step)

    return None, step

  def __call__(self, batch: dict[str, jnp.ndarray], train: bool = False) -> jnp.ndarray:
    packed = [k for k in PACKING_KEYS if k in batch]
    if packed:
      raise ValueError(f"rnn_seq2seq does not take packed batches (got {packed}); disable packing")
    memory = self.encode(batch["inputs"], train)
    return self.decode(memory, batch["targets"], train)
