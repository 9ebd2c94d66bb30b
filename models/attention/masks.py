"""Boolean attention masks, shared by every attention type and model.

Convention: True = the query may attend to the key. Masks broadcast to
`[batch, heads, q_len, kv_len]`.
"""

import jax.numpy as jnp


def padding_mask(q_valid: jnp.ndarray | None, kv_valid: jnp.ndarray) -> jnp.ndarray:
  """`[B, Tq]`, `[B, Tk]` validity -> `[B, 1, Tq, Tk]` (or `[B, 1, 1, Tk]` if `q_valid` is None)."""
  kv = kv_valid.astype(bool)[:, None, None, :]
  if q_valid is None:
    return kv
  return jnp.logical_and(q_valid.astype(bool)[:, None, :, None], kv)


def causal_mask(q_len: int, kv_len: int | None = None, offset: int = 0) -> jnp.ndarray:
  """`[1, 1, Tq, Tk]`: query i (at absolute position i + offset) sees keys j <= i + offset."""
  kv_len = q_len if kv_len is None else kv_len
  q_pos = jnp.arange(q_len)[:, None] + offset
  return (jnp.arange(kv_len)[None, :] <= q_pos)[None, None]


def segment_mask(q_segments: jnp.ndarray, kv_segments: jnp.ndarray) -> jnp.ndarray:
  """Packed sequences: `[B, Tq]`, `[B, Tk]` segment ids -> `[B, 1, Tq, Tk]` (same segment only)."""
  return (q_segments[:, None, :, None] == kv_segments[:, None, None, :]) & (
    q_segments[:, None, :, None] > 0
  )


def combine(*masks: jnp.ndarray | None) -> jnp.ndarray | None:
  """Logical AND of the masks that are not None (None if all are)."""
  present = [m for m in masks if m is not None]
  if not present:
    return None
  out = present[0]
  for m in present[1:]:
    out = jnp.logical_and(out, m)
  return out


def as_4d(mask: jnp.ndarray) -> jnp.ndarray:
  """A mask of fewer dimensions with leading 1s: `[Tq, Tk]` -> `[1, 1, Tq, Tk]`."""
  return mask.reshape((1,) * (4 - mask.ndim) + mask.shape)


def key_padding(mask: jnp.ndarray | None, kv_len: int) -> jnp.ndarray | None:
  """Reduce a mask that only depends on keys (`[B, 1, 1, Tk]`) to `[B, Tk]`.

  Used by attention types whose cost model forbids a dense `[Tq, Tk]` mask (linear, performer,
  sliding window, ...). Raises if the mask varies over queries or heads.
  """
  if mask is None:
    return None
  if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2] != 1 or mask.shape[3] != kv_len:
    raise ValueError(
      f"this attention type takes only a key-padding mask of shape [B, 1, 1, {kv_len}], got "
      f"{tuple(mask.shape)}; pass causal=True instead of a causal mask and do not pack sequences"
    )
  return mask[:, 0, 0, :]
