"""The arithmetic of the types' analytic forward FLOPs (`Attention.forward_flops`).

2 FLOPs per multiply-add; element-wise work is not counted except additions at the O(T² d) scale
(additive-style scores). b, t, h, d = batch, length, heads, head width; e = h d. Dense types
count all T² query-key pairs (what they compute, also when causal). tests/test_benchmark.py
checks every type's formula against XLA's count of its program.
"""

from typing import Protocol


class CallShape(Protocol):
  """What a formula reads of a call: self-attention on inputs `[batch, length, heads *
  head_dim]` (e.g. the benchmark's `Shape`)."""

  @property
  def batch(self) -> int: ...

  @property
  def length(self) -> int: ...

  @property
  def heads(self) -> int: ...

  @property
  def head_dim(self) -> int: ...

  @property
  def width(self) -> int: ...  # heads * head_dim

  @property
  def causal(self) -> bool: ...


def proj(s: CallShape, n: int) -> float:
  """n projections `[B, T, E] x [E, E]` (query, key, value, out)."""
  return n * 2.0 * s.batch * s.length * s.width * s.width


def dense(s: CallShape, pairs: float | None = None) -> float:
  """q kᵀ and w v over `pairs` query-key pairs per head (default T²)."""
  pairs = s.length * s.length if pairs is None else pairs
  return 4.0 * s.batch * s.heads * pairs * s.head_dim


def elements(s: CallShape) -> float:
  """B·T·H·D: the size of one `[B, T, H, Dh]` tensor."""
  return float(s.batch * s.length * s.heads * s.head_dim)


def kernel(s: CallShape, features: int, chunk_size: int) -> float:
  """Linear attention with `features` per head (`linear.kernel_attention`)."""
  t, m, d = s.length, features, s.head_dim
  body = 2 * 2.0 * s.batch * s.heads * t * m * d  # Σ φ(k) vᵀ, φ(q)ᵀ S
  if s.causal:  # exact within chunks of C: φ(q) φ(k)ᵀ and its product with v
    c = min(chunk_size, t)
    body += 2.0 * s.batch * s.heads * t * c * (m + d)
  return body


def banded(s: CallShape, window: int, extra_keys: int = 0) -> float:
  """Blocks of `window` queries against 3 (causal 2) blocks of keys, plus `extra_keys`."""
  padded = -(-s.length // window) * window
  return dense(s, padded * ((2 if s.causal else 3) * window + extra_keys))
