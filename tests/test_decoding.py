"""Greedy, beam search, sampling and attention maps, on hand-built and tiny real models."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from input_pipeline.base import TaskInfo
from models import decoding

jax.config.update("jax_disable_most_optimizations", True)

EOS = 1


def markov_step(log_probs: np.ndarray):
  """A hand-built 'model': next-token log-probs depend only on the previous token.

  The state counts steps per row (checks that beam search gathers states with the beams).
  """
  table = jnp.asarray(log_probs, jnp.float32)

  def step(state, tokens):
    return table[tokens], state + 1

  return step


def table(rows: dict[int, dict[int, float]], vocab: int) -> np.ndarray:
  out = np.full((vocab, vocab), 1e-9)
  for prev, nxt in rows.items():
    for tok, p in nxt.items():
      out[prev, tok] = p
  return np.log(out / out.sum(1, keepdims=True))


def sequence_logp(log_probs: np.ndarray, seq) -> float:
  prev, total = 0, 0.0
  for tok in seq:
    total += log_probs[prev, tok]
    if tok == EOS:
      break
    prev = tok
  return total


def beam(step, b, k, n, alpha):
  return jax.jit(
    lambda s: decoding.beam_search_fn(step, s, b, k, n, EOS, alpha), static_argnums=()
  )(jnp.zeros((b * k,), jnp.int32))


def test_beam_one_equals_greedy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(7, 7)) * 2
  logits[:, 0] = -30  # never padding
  logits[:, EOS] += 1.0  # sequences end
  log_probs = np.asarray(jax.nn.log_softmax(logits))
  step = markov_step(log_probs)
  greedy = decoding.greedy_search(step, jnp.zeros((1,), jnp.int32), 1, 8, EOS)
  seqs, scores = beam(step, 1, 1, 8, 0.0)
  np.testing.assert_array_equal(seqs[:, 0], greedy)
  np.testing.assert_allclose(scores[0, 0], sequence_logp(log_probs, greedy[0]), rtol=1e-5)


def test_beam_finds_a_better_sequence_than_greedy():
  # BOS -> A (0.6) | B (0.4);  A -> EOS/A/B ~ 1/3 each;  B -> EOS (0.9)
  a, b_ = 2, 3
  log_probs = table(
    {0: {a: 0.6, b_: 0.4}, a: {EOS: 0.34, a: 0.33, b_: 0.33}, b_: {EOS: 0.9, a: 0.1}}, 4
  )
  step = markov_step(log_probs)
  greedy = decoding.greedy_search(step, jnp.zeros((2,), jnp.int32), 2, 5, EOS)
  np.testing.assert_array_equal(greedy[0], [a, EOS, 0, 0, 0])
  seqs, scores = beam(step, 2, 2, 5, 0.0)
  np.testing.assert_array_equal(seqs[0, 0], [b_, EOS, 0, 0, 0])
  assert scores[0, 0] > sequence_logp(log_probs, greedy[0]) + 0.5
  np.testing.assert_allclose(scores[0, 0], np.log(0.4 * 0.9), rtol=1e-4)
  assert scores[0, 0] >= scores[0, 1]  # best first


@pytest.mark.parametrize("alpha,expected", [(0.0, [EOS, 0, 0, 0]), (1.0, [2, 3, EOS, 0])])
def test_length_penalty_changes_the_choice(alpha, expected):
  # short: EOS (0.5);  long: A B EOS (0.45 * 0.95 * 0.99 = 0.423)
  log_probs = table({0: {EOS: 0.5, 2: 0.45, 3: 0.05}, 2: {3: 0.95, EOS: 0.05}, 3: {EOS: 0.99}}, 4)
  seqs, scores = beam(markov_step(log_probs), 1, 2, 4, alpha)
  np.testing.assert_array_equal(seqs[0, 0], expected)
  lp = ((5 + np.count_nonzero(expected)) / 6) ** alpha
  np.testing.assert_allclose(scores[0, 0], sequence_logp(log_probs, expected) / lp, rtol=1e-4)


def test_finished_hypotheses_leave_the_beam():
  """K = 2: after step 1 the alive beams must be A and B, not the finished [EOS]; only then is
  B EOS (0.2) found as the second best (keeping [EOS] alive would lose B)."""
  a, b_ = 2, 3
  log_probs = table(
    {0: {EOS: 0.5, a: 0.3, b_: 0.2}, a: {a: 0.9, EOS: 0.1}, b_: {EOS: 1.0}, EOS: {a: 1.0}}, 4
  )
  seqs, scores = beam(markov_step(log_probs), 1, 2, 5, 0.0)
  np.testing.assert_array_equal(seqs[0], [[EOS, 0, 0, 0, 0], [b_, EOS, 0, 0, 0]])
  np.testing.assert_allclose(scores[0], np.log([0.5, 0.2]), rtol=1e-4)


def test_beam_states_follow_their_beams():
  """A second-order 'model' (the state is the previous input token): each returned sequence's
  score is its own log-probability only if the states are reordered with the beams."""
  rng = np.random.default_rng(1)
  v, k, n, alpha = 6, 3, 6, 0.6
  logits = rng.normal(size=(v, v, v)) * 2
  logits[..., 0] = -30  # never padding
  logits[..., EOS] += 0.5
  log_probs = np.asarray(jax.nn.log_softmax(logits))
  tables = jnp.asarray(log_probs, jnp.float32)

  def step(state, tokens):  # state: the token fed one step earlier
    return tables[state, tokens], tokens

  seqs, scores = beam(step, 2, k, n, alpha)
  checked = 0
  for row in range(2):
    for j in range(k):
      seq = np.asarray(seqs[row, j]).tolist()
      if EOS not in seq:
        continue
      seq = seq[: seq.index(EOS) + 1]
      prev2, prev, total = 0, 0, 0.0
      for tok in seq:
        total += log_probs[prev2, prev, tok]
        prev2, prev = prev, tok
      lp = ((5 + len(seq)) / 6) ** alpha
      np.testing.assert_allclose(scores[row, j], total / lp, rtol=1e-4)
      checked += 1
  assert checked >= 4


def test_filter_logits_top_k_and_top_p():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  kept = lambda x: np.isfinite(np.asarray(x))[0].tolist()  # noqa: E731
  assert kept(decoding.filter_logits(logits, 1.0, 2, None)) == [True, True, False, False]
  assert kept(decoding.filter_logits(logits, 1.0, None, 0.7)) == [True, True, False, False]
  assert kept(decoding.filter_logits(logits, 1.0, None, 0.5)) == [True, False, False, False]
  assert kept(decoding.filter_logits(logits, 1.0, None, 0.9)) == [True, True, True, False]


# ------------------------------------------------------------------------------ real models


Info = functools.partial(
  TaskInfo,
  kind="seq2seq",
  vocab_size=11,
  target_vocab_size=None,
  num_classes=None,
  max_input_length=6,
  max_target_length=6,
  eos_id=EOS,
)


BATCH = {
  "inputs": jnp.array([[3, 4, 5, 6, 0, 0], [3, 4, 5, 6, 7, 8]], jnp.int32),
  "targets": jnp.array([[5, 6, 7, 1, 0, 0], [5, 6, 7, 8, 9, 1]], jnp.int32),
}


def tiny(name, attention_name="scaled_dot", **kw):
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
    attention={"name": attention_name},
  )
  cfg.update(kw)
  return cfg


def consistent_with_teacher_forcing(model, variables, tokens):
  """Decoded tokens are the argmax of a teacher-forced pass over them, up to their EOS."""
  logits = jax.jit(model.apply)(variables, {"inputs": BATCH["inputs"], "targets": tokens})
  real = jnp.cumsum(tokens == EOS, axis=1) - (tokens == EOS) == 0  # up to and incl. EOS
  real &= tokens > 0
  agree = (jnp.argmax(logits, -1) == tokens) | ~real
  assert bool(agree.all()), (tokens, jnp.argmax(logits, -1))


@pytest.mark.parametrize(
  "name,attention_name",
  [("transformer", "scaled_dot"), ("transformer", "dot"), ("rnn_seq2seq", "location_sensitive")],
)
def test_greedy_on_real_models(name, attention_name):
  """Cached (scaled_dot), prefix re-run (no cache) and RNN step functions decode consistently."""
  model = models.build(tiny(name, attention_name), Info())
  variables = jax.jit(model.init)(jax.random.key(0), BATCH)
  variables = {"params": variables["params"]}
  tokens = decoding.greedy(model, variables, BATCH, max_len=6, eos_id=EOS)
  assert tokens.shape == (2, 6)
  consistent_with_teacher_forcing(model, variables, tokens)
  maps = decoding.attention_weights(model, variables, {**BATCH, "targets": tokens})
  cross = [w for k, w in maps.items() if "cross" in k or k == "attention_weights"]
  assert cross and cross[0].shape[0] == 2 and cross[0].shape[2:] == (6, 6)  # [B, H, T, S]
  np.testing.assert_allclose(cross[0][1].sum(-1), 1.0, atol=1e-5)  # row 1: no padded input


def test_beam_search_on_transformer():
  model = models.build(tiny("transformer"), Info())
  variables = {"params": jax.jit(model.init)(jax.random.key(0), BATCH)["params"]}
  seqs, scores = decoding.beam_search(
    model, variables, BATCH, beam_size=3, max_len=6, eos_id=EOS, alpha=0.6
  )
  assert seqs.shape == (2, 3, 6) and scores.shape == (2, 3)
  assert np.all(np.diff(np.asarray(scores), axis=1) <= 1e-6)  # best first
  # The best beam's score is its length-penalised log-probability under the model.
  best = seqs[:, 0]
  logits = jax.jit(model.apply)(variables, {"inputs": BATCH["inputs"], "targets": best})
  logp = jax.nn.log_softmax(logits)
  tok_logp = jnp.take_along_axis(logp, best[..., None], -1)[..., 0]
  length = (best > 0).sum(1)
  expected = (tok_logp * (best > 0)).sum(1) / ((5 + length) / 6) ** 0.6
  np.testing.assert_allclose(scores[:, 0], expected, rtol=1e-4, atol=1e-4)


def test_lm_sampling():
  info = Info(kind="lm", max_target_length=None, max_input_length=8)
  model = models.build(tiny("decoder_lm"), info)
  variables = jax.jit(model.init)(jax.random.key(0), {"inputs": BATCH["inputs"]})
  variables = {"params": variables["params"]}
  prompt = jnp.array([[4, 5, 0], [6, 0, 0]], jnp.int32)
  greedy = decoding.sample(
    model, variables, jax.random.key(0), prompt, max_len=8, temperature=0.0, eos_id=EOS
  )
  top1 = decoding.sample(
    model, variables, jax.random.key(3), prompt, max_len=8, temperature=1.0, top_k=1, eos_id=EOS
  )
  np.testing.assert_array_equal(greedy, top1)
  np.testing.assert_array_equal(greedy[0, :2], [4, 5])  # the prompt is kept
  np.testing.assert_array_equal(greedy[1, :1], [6])
  logits = jax.jit(model.apply)(variables, {"inputs": greedy})
  free = (jnp.arange(8)[None] >= jnp.array([[2], [1]])) & (greedy > 0)
  assert bool(((jnp.argmax(logits, -1) == greedy) | ~free).all())
  drawn = decoding.sample(
    model, variables, jax.random.key(1), prompt, max_len=8, temperature=1.0, top_p=0.9
  )
  assert drawn.shape == (2, 8) and bool((drawn >= 0).all())
