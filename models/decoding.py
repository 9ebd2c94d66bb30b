"""Decoding: greedy, beam search (GNMT length penalty) and sampling; attention maps of the output.

    tokens = decoding.greedy(model, variables, batch, max_len=32, eos_id=1)            # [B, L]
    tokens, scores = decoding.beam_search(model, variables, batch, beam_size=4, alpha=0.6,
                                          max_len=32, eos_id=1)                        # [B, K, L]
    tokens = decoding.sample(lm, variables, rng, prompt, max_len=64, temperature=0.8,
                             top_k=40, top_p=0.95, eos_id=1)                           # [B, L]
    maps = decoding.attention_weights(model, variables, {**batch, "targets": tokens})

Outputs are target-format sequences: the decoded tokens, the EOS, then 0 (padding); no BOS.

Every decoder is driven through one step function `step(state, tokens [N]) -> (logits [N, V],
state)` whose state leaves have the batch (× beams) as leading axis (scalars are shared), so
the search code is written once (`greedy_search`, `beam_search_fn`, `sample_fn` take any step
function; the tests drive them with hand-built ones). Each family owns its step:
`model.decoding_step(variables, batch, max_len, times) -> (initial state, step)` (the
`tokens_to_logits` callback of flax's examples), and `step_function` only asks for it:

* `transformer` / `decoder_lm` (`transformer_blocks.stack_decoding`): with a cacheable attention
  type (a `decode` field, e.g. `scaled_dot`) one position per call with key/value caches in the
  `cache` collection; other types re-run the whole prefix each step;
* `rnn_seq2seq`: the encoder once, then `RNNSeq2Seq.decode_step` (RNN carry and
  `attention_state`).

The first step (BOS in) runs before the loop, so states that only take their final structure
after one step (the `attention_state` collection) are carried with a fixed structure.
Everything runs under `jax.jit` (model and sizes static); the loops are `lax.while_loop`s that
stop once every sequence has finished.

Length penalty (Wu et al. 2016, GNMT): score = log p(y) / lp(|y|), lp(n) = ((5 + n) / 6)^α;
|y| counts the EOS.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

StepFn = Callable[[Any, jnp.ndarray], tuple[jnp.ndarray, Any]]
NEG_INF = -1.0e7  # large but finite, so arithmetic on "impossible" scores stays NaN-free


# ----------------------------------------------------------------------- model step functions


def expand(tree: Any, batch: int, times: int) -> Any:
  """Repeat every leaf with leading axis `batch` `times` times: `[B, ...]` -> `[B·times, ...]`."""
  if times == 1:
    return tree

  def rep(x):
    if hasattr(x, "ndim") and x.ndim >= 1 and x.shape[0] == batch:
      return jnp.repeat(x, times, axis=0)
    return x

  return jax.tree.map(rep, tree)


def _family(model: nn.Module) -> str:
  return getattr(type(model), "registry_name", type(model).__name__)


def step_function(
  model: nn.Module, variables: Any, batch: dict[str, jnp.ndarray], max_len: int, times: int = 1
) -> tuple[Any, StepFn]:
  """-> (initial state, step) for decoding `max_len` tokens of `batch` rows repeated `times`.

  The family owns its step: `model.decoding_step(variables, batch, max_len, times)`. Seq2seq
  families read `batch['inputs']`; `decoder_lm` decodes from BOS (prompts: see `sample`).
  """
  decoding_step = getattr(model, "decoding_step", None)
  if decoding_step is None:
    raise ValueError(f"no step-wise decoding for model {_family(model)!r}")
  return decoding_step(variables, batch, max_len, times)


# ----------------------------------------------------------------------------------- greedy


def greedy_search(step: StepFn, state: Any, batch_size: int, max_len: int, eos_id: int):
  """Argmax decoding with any step function -> tokens `[B, max_len]` (EOS, then 0)."""
  logits, state = step(state, jnp.zeros((batch_size,), jnp.int32))
  y = jnp.argmax(logits, -1).astype(jnp.int32)
  out = jnp.zeros((batch_size, max_len), jnp.int32).at[:, 0].set(y)

  def cond(carry):
    t, _, _, _, done = carry
    return (t < max_len) & ~jnp.all(done)

  def body(carry):
    t, y, out, state, done = carry
    logits, state = step(state, y)
    y = jnp.where(done, 0, jnp.argmax(logits, -1).astype(jnp.int32))
    return t + 1, y, out.at[:, t].set(y), state, done | (y == eos_id)

  carry = (jnp.array(1), y, out, state, y == eos_id)
  return jax.lax.while_loop(cond, body, carry)[2]


@functools.partial(jax.jit, static_argnames=("model", "max_len", "eos_id"))
def greedy(
  model: nn.Module, variables: Any, batch: dict[str, jnp.ndarray], *, max_len: int, eos_id: int
) -> jnp.ndarray:
  """Greedy decoding of a seq2seq model (or an LM from BOS) -> tokens `[B, max_len]`."""
  state, step = step_function(model, variables, batch, max_len)
  return greedy_search(step, state, next(iter(batch.values())).shape[0], max_len, eos_id)


# ------------------------------------------------------------------------------ beam search


def length_penalty(length: jnp.ndarray, alpha: float) -> jnp.ndarray:
  """GNMT: ((5 + |y|) / 6)^α."""
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def gather_beams(tree: Any, indices: jnp.ndarray, flat: bool = False) -> Any:
  """Select beams by `indices [B, K]`: leaves `[B, K_old, ...]`, or `[B·K_old, ...]` if `flat`.

  Scalar leaves (e.g. a cache index) are shared by all beams and kept.
  """
  b = indices.shape[0]

  def take(x):
    if not hasattr(x, "ndim") or x.ndim == 0:
      return x
    if flat:
      x = x.reshape((b, -1) + x.shape[1:])
    x = jnp.take_along_axis(x, indices.reshape(indices.shape + (1,) * (x.ndim - 2)), axis=1)
    return x.reshape((-1,) + x.shape[2:]) if flat else x

  return jax.tree.map(take, tree)


@flax.struct.dataclass
class BeamState:
  t: jnp.ndarray  # number of tokens decoded
  alive_seq: jnp.ndarray  # [B, K, L]
  alive_logp: jnp.ndarray  # [B, K]
  finished_seq: jnp.ndarray  # [B, K, L]
  finished_score: jnp.ndarray  # [B, K] (length-penalised; NEG_INF if empty)
  finished_flag: jnp.ndarray  # [B, K]
  state: Any  # the step function's state, leaves [B·K, ...]


def beam_search_fn(
  step: StepFn,
  state: Any,
  batch_size: int,
  beam_size: int,
  max_len: int,
  eos_id: int,
  alpha: float = 0.6,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Beam search with any step function (state already expanded to B·K rows).

  Returns the finished sequences `[B, K, max_len]`, best first, and their length-penalised
  scores `[B, K]`; rows with no finished sequence return their alive beams (scored likewise).
  """
  b, k, n = batch_size, beam_size, max_len

  def advance(bs: BeamState, logits: jnp.ndarray) -> BeamState:
    logp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(b, k, -1)  # [B, K, V]
    vocab = logp.shape[-1]
    cand = (bs.alive_logp[..., None] + logp).reshape(b, k * vocab)
    top_logp, top_idx = jax.lax.top_k(cand, 2 * k)  # [B, 2K]
    beam_idx, token = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
    seqs = gather_beams(bs.alive_seq, beam_idx)
    seqs = jax.vmap(jax.vmap(lambda s, y: s.at[bs.t].set(y)))(seqs, token)
    is_eos = token == eos_id
    # Alive: the K best that did not end.
    alive_logp, alive_pos = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_logp), k)
    alive_from = jnp.take_along_axis(beam_idx, alive_pos, axis=1)
    alive_seq = jnp.take_along_axis(seqs, alive_pos[..., None], axis=1)
    # Finished: merge the new EOS candidates with the old finished, keep the K best.
    score = top_logp / length_penalty(bs.t + 1, alpha)
    score = jnp.where(is_eos, score, NEG_INF)
    all_seq = jnp.concatenate([bs.finished_seq, seqs], axis=1)
    all_score = jnp.concatenate([bs.finished_score, score], axis=1)
    all_flag = jnp.concatenate([bs.finished_flag, is_eos], axis=1)
    fin_score, fin_pos = jax.lax.top_k(all_score, k)
    return BeamState(
      t=bs.t + 1,
      alive_seq=alive_seq,
      alive_logp=alive_logp,
      finished_seq=jnp.take_along_axis(all_seq, fin_pos[..., None], axis=1),
      finished_score=fin_score,
      finished_flag=jnp.take_along_axis(all_flag, fin_pos, axis=1),
      state=gather_beams(bs.state, alive_from, flat=True),
    )

  def last_tokens(bs: BeamState) -> jnp.ndarray:
    return jnp.take(bs.alive_seq, bs.t - 1, axis=2).reshape(b * k)

  init = BeamState(
    t=jnp.array(0),
    alive_seq=jnp.zeros((b, k, n), jnp.int32),
    alive_logp=jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1)), (b, 1)),
    finished_seq=jnp.zeros((b, k, n), jnp.int32),
    finished_score=jnp.full((b, k), NEG_INF),
    finished_flag=jnp.zeros((b, k), bool),
    state=None,
  )
  logits, state = step(state, jnp.zeros((b * k,), jnp.int32))
  bs = advance(init.replace(state=state), logits)

  def cond(bs: BeamState):
    # Stop when no alive beam can beat the worst kept finished one (lp grows with length).
    best_alive = bs.alive_logp[:, 0] / length_penalty(jnp.array(n), alpha)
    worst_finished = jnp.where(bs.finished_flag, bs.finished_score, NEG_INF).min(axis=1)
    hopeless = jnp.all(bs.finished_flag, axis=1) & (worst_finished >= best_alive)
    return (bs.t < n) & ~jnp.all(hopeless)

  def body(bs: BeamState) -> BeamState:
    logits, state = step(bs.state, last_tokens(bs))
    return advance(bs.replace(state=state), logits)

  bs = jax.lax.while_loop(cond, body, bs)
  # Rows without any finished sequence fall back to their alive beams.
  none = ~jnp.any(bs.finished_flag, axis=1)
  alive_score = bs.alive_logp / length_penalty(bs.t, alpha)
  seqs = jnp.where(none[:, None, None], bs.alive_seq, bs.finished_seq)
  scores = jnp.where(none[:, None], alive_score, bs.finished_score)
  return seqs, scores


@functools.partial(jax.jit, static_argnames=("model", "beam_size", "max_len", "eos_id", "alpha"))
def beam_search(
  model: nn.Module,
  variables: Any,
  batch: dict[str, jnp.ndarray],
  *,
  beam_size: int,
  max_len: int,
  eos_id: int,
  alpha: float = 0.6,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Beam search of a seq2seq model -> tokens `[B, K, max_len]` best first, scores `[B, K]`."""
  b = next(iter(batch.values())).shape[0]
  state, step = step_function(model, variables, batch, max_len, times=beam_size)
  return beam_search_fn(step, state, b, beam_size, max_len, eos_id, alpha)


# --------------------------------------------------------------------------------- sampling


def filter_logits(
  logits: jnp.ndarray, temperature: float, top_k: int | None, top_p: float | None
) -> jnp.ndarray:
  """`[N, V]` -> logits / τ with all but the top-k / nucleus (top-p) tokens set to -inf."""
  logits = logits.astype(jnp.float32) / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits >= kth, logits, -jnp.inf)
  if top_p is not None and top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each sorted token
    keep = before < top_p  # the smallest prefix whose mass reaches top_p (>= 1 token)
    cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits >= cutoff, logits, -jnp.inf)
  return logits


def sample_fn(
  step: StepFn,
  state: Any,
  rng: jax.Array,
  prompt: jnp.ndarray,
  max_len: int,
  temperature: float = 1.0,
  top_k: int | None = None,
  top_p: float | None = None,
  eos_id: int | None = None,
) -> jnp.ndarray:
  """Ancestral sampling; `prompt [B, P]` (0-padded) tokens are forced -> tokens `[B, max_len]`.

  `temperature = 0` is greedy. After EOS (outside the prompt) a row emits 0.
  """
  b = prompt.shape[0]
  prompt = jnp.pad(prompt, ((0, 0), (0, max(max_len - prompt.shape[1], 0))))[:, :max_len]

  def choose(logits, t, key, done):
    if temperature == 0.0:
      y = jnp.argmax(logits, -1)
    else:
      y = jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p))
    forced = prompt[:, t]
    y = jnp.where(forced > 0, forced, y).astype(jnp.int32)
    y = jnp.where(done, 0, y)
    ended = (forced == 0) & (y == eos_id) if eos_id is not None else jnp.zeros_like(done)
    return y, done | ended

  keys = jax.random.split(rng, max_len)
  logits, state = step(state, jnp.zeros((b,), jnp.int32))
  y, done = choose(logits, 0, keys[0], jnp.zeros((b,), bool))
  out = jnp.zeros((b, max_len), jnp.int32).at[:, 0].set(y)

  def cond(carry):
    t, _, _, _, done = carry
    return (t < max_len) & ~jnp.all(done)

  def body(carry):
    t, y, out, state, done = carry
    logits, state = step(state, y)
    y, done = choose(logits, t, keys[t], done)
    return t + 1, y, out.at[:, t].set(y), state, done

  return jax.lax.while_loop(cond, body, (jnp.array(1), y, out, state, done))[2]


@functools.partial(
  jax.jit, static_argnames=("model", "max_len", "temperature", "top_k", "top_p", "eos_id")
)
def sample(
  model: nn.Module,
  variables: Any,
  rng: jax.Array,
  prompt: jnp.ndarray,
  *,
  max_len: int,
  temperature: float = 1.0,
  top_k: int | None = None,
  top_p: float | None = None,
  eos_id: int | None = None,
) -> jnp.ndarray:
  """Sample continuations of `prompt [B, P]` (0-padded; `[B, 0]` for none) from a `decoder_lm`
  (or any seq2seq model, given `{'inputs'}` via `step_function`) -> tokens `[B, max_len]`."""
  state, step = step_function(model, variables, {"inputs": prompt}, max_len)
  return sample_fn(step, state, rng, prompt, max_len, temperature, top_k, top_p, eos_id)


# ------------------------------------------------------------------------- attention maps


@functools.partial(jax.jit, static_argnames=("model",))
def attention_weights(
  model: nn.Module, variables: Any, batch: dict[str, jnp.ndarray]
) -> dict[str, jnp.ndarray]:
  """Teacher-forced pass over `batch` (e.g. `targets` = decoded tokens) -> sown weights.

  Returns `{'decoder/decoderblock_0/cross_attention': [B, H, Tq, Tk], ...}` (for
  `rnn_seq2seq`: `{'attention_weights': [B, H, T, S]}`, one map per decoded step).
  """
  _, state = model.apply(
    {"params": variables["params"]}, batch, train=False, mutable=["intermediates"]
  )
  out = {}
  flat = flax.traverse_util.flatten_dict(state.get("intermediates", {}), sep="/")
  for path, value in flat.items():
    name = path.removesuffix("/attention_weights")
    for i, w in enumerate(value if isinstance(value, tuple) else (value,)):
      out[name if i == 0 else f"{name}_{i}"] = w
  return out
