"""Learning-rate schedules at chosen steps against their formulas; gradient accumulation equal to
one big batch; corpus BLEU against a hand computation (Papineni et al. 2002)."""

import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from experiments.run import optim
from input_pipeline.translation import bleu

LR, WARMUP, UPDATES = 0.5, 10, 100


def _config(**fields):
  config = default.get_config().optimizer
  config.update(fields)
  return config


def _formula(name: str, s: int) -> float:
  """The schedules as written in their papers / optax docs, step s (0-based update count)."""
  if name == "constant":
    return LR
  if name == "rsqrt":  # Vaswani et al. 2017, counted from step 1
    return LR * min((s + 1) / WARMUP, math.sqrt(WARMUP / (s + 1)))
  if s < WARMUP:
    return LR * s / WARMUP
  frac = min((s - WARMUP) / (UPDATES - WARMUP), 1.0)
  if name == "warmup_cosine":
    return LR * 0.5 * (1 + math.cos(math.pi * frac))
  return LR * (1 - frac)  # linear


@pytest.mark.parametrize("name", optim.SCHEDULES)
def test_schedule_values_follow_the_formula(name):
  fn = optim.schedule(_config(schedule=name, learning_rate=LR, warmup_steps=WARMUP), UPDATES)
  for s in (0, 1, 5, 9, 10, 11, 37, 55, 99, 100, 140):
    assert float(fn(s)) == pytest.approx(_formula(name, s), rel=1e-5, abs=1e-7), s


def test_unknown_schedule_lists_the_valid_ones():
  with pytest.raises(ValueError, match="valid: constant, warmup_cosine, linear, rsqrt"):
    optim.schedule(_config(schedule="step"), 10)


def _regression(seed: int = 0):
  """A linear least-squares problem split into 3 micro-batches of 4 rows."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(12, 3)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(12,)), jnp.float32)
  loss = lambda p, xb, yb: jnp.mean((xb @ p["w"] + p["b"] - yb) ** 2)  # noqa: E731
  return x, y, jax.grad(loss)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_gradient_accumulation_equals_one_big_batch(name):
  """k = 3 micro-batches per update (mean of their gradients, schedule counted in updates) takes
  the same steps as k = 1 on the concatenated batch; a sum instead of a mean would not."""
  x, y, grad = _regression()
  fields = dict(name=name, schedule="warmup_cosine", warmup_steps=1, learning_rate=0.1)
  fields.update(momentum=0.9, grad_clip_norm=100.0, weight_decay=0.01)
  accum = optim.create(_config(grad_accum_steps=3, **fields), 9)  # 9 batches: 3 updates
  big = optim.create(_config(grad_accum_steps=1, **fields), 3)
  p_acc = p_big = {"w": jnp.ones(3), "b": jnp.zeros(())}
  s_acc, s_big = accum.init(p_acc), big.init(p_big)
  for _ in range(3):  # the third update's learning rate tells 3 from 9 scheduled updates
    for i in range(3):
      g = grad(p_acc, x[4 * i : 4 * i + 4], y[4 * i : 4 * i + 4])
      u, s_acc = accum.update(g, s_acc, p_acc)
      p_acc = optax.apply_updates(p_acc, u)
    u, s_big = big.update(grad(p_big, x, y), s_big, p_big)
    p_big = optax.apply_updates(p_big, u)
    for k in p_big:
      np.testing.assert_allclose(p_acc[k], p_big[k], rtol=1e-5, atol=1e-6)
  assert not np.allclose(p_big["w"], 1.0)  # it did move


def test_sgd_momentum_is_heavy_ball():
  """Constant gradient g: steps −lr·g, then −lr·(1 + μ)·g (Polyak momentum, optax's form)."""
  tx = optim.create(
    _config(name="sgd", momentum=0.9, schedule="constant", learning_rate=0.1, grad_clip_norm=0), 2
  )
  p = jnp.zeros(2)
  state = tx.init(p)
  g = jnp.array([1.0, -2.0])
  for want in (-0.1 * g, -0.1 * g - 0.19 * g):
    u, state = tx.update(g, state, p)
    p = optax.apply_updates(p, u)
    np.testing.assert_allclose(p, want, rtol=1e-6)


def test_adamw_decays_weights_by_lr_times_rate():
  """With zero gradients Adam's step is 0, so AdamW moves by −lr · weight_decay · p."""
  tx = optim.create(
    _config(name="adamw", schedule="constant", learning_rate=0.5, weight_decay=0.1), 2
  )
  p = jnp.array([2.0, -4.0])
  u, _ = tx.update(jnp.zeros(2), tx.init(p), p)
  np.testing.assert_allclose(u, -0.05 * p, rtol=1e-6)


def _ngrams(words: list[str], n: int) -> collections.Counter:
  return collections.Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def _bleu(hypotheses: list[str], references: list[str]) -> float:
  """Corpus BLEU-4: clipped n-gram precisions over the corpus, geometric mean, brevity penalty."""
  matches, totals, hyp_len, ref_len = [0] * 4, [0] * 4, 0, 0
  for h, r in zip(hypotheses, references, strict=True):
    hw, rw = h.split(), r.split()
    hyp_len, ref_len = hyp_len + len(hw), ref_len + len(rw)
    for n in range(1, 5):
      hc, rc = _ngrams(hw, n), _ngrams(rw, n)
      matches[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
      totals[n - 1] += max(len(hw) - n + 1, 0)
  log_p = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / 4
  bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
  return 100 * bp * math.exp(log_p)


def test_bleu_matches_a_hand_computation():
  refs = ["3 4 5 6 7 8", "9 10 11 12 13", "2 3 4 5 6 7 8 9"]
  hyps = ["3 4 5 6 7 9", "9 10 11 12", "2 3 4 5 6 7 8 9"]  # a wrong token, a short one, exact
  assert bleu(hyps, refs) == pytest.approx(_bleu(hyps, refs), rel=1e-6)
  assert bleu(refs, refs) == pytest.approx(100.0)
  assert bleu(hyps, refs) < 100.0
  with pytest.raises(ValueError, match="2 hypotheses but 3 references"):
    bleu(hyps[:2], refs)
