"""Blocking and gathering helpers shared by the long-range types (one copy, used by several).

Banded attention (`sliding_window`, `longformer`, causal `lsh`): the sequence (padded to a
multiple of the block size w = window) is cut into blocks of w positions; the queries of block n
see the keys of blocks n − 1, n and n + 1 (causal: n − 1 and n), which hold every key with
|i − j| <= w. Scores are formed only for these S = 3w (causal 2w) keys per query, with a band
mask, so the cost is O(T · S) rather than O(T²):

    scores `[B, nb, H, w, S]`,  allowed `[B, nb, 1, w, S]`,  nb = ⌈T / w⌉

Block-sparse attention (`bigbird`, `sparse_fixed`, `sinkhorn`, `lsh`): `split_blocks`,
`gather_time` (per-head key positions), `joint_softmax` (one softmax over several key sets) and
`scatter_dense` (blocked weights -> `[B, H, Tq, Tk]`, O(T²), only for sowing them).
`layer_key`/`constant`: per-layer fixed randomness and non-trainable constants.
`SparseSelfAttention`: the shared call of the self-attention-only types.
"""

import zlib
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.attention import masks
from models.attention.base import Attention, normalize

CONSTANTS = "constants"  # the non-trainable collection of fixed random draws


def key_validity(mask: jnp.ndarray | None, length: int, batch: int) -> jnp.ndarray:
  """A key-padding mask `[B, 1, 1, T]` (or None) -> `[B, T]` booleans."""
  valid = masks.key_padding(mask, length)
  return jnp.ones((batch, length), bool) if valid is None else valid


def check_self_attention(name: str, inputs_q: jnp.ndarray, inputs_kv: jnp.ndarray | None) -> None:
  if inputs_kv is not None and inputs_kv is not inputs_q:
    raise ValueError(f"{name} is self-attention only (inputs_kv must be None)")


class SparseSelfAttention(Attention):
  """The call shared by the self-attention types that score only some keys per query: project,
  scale the queries by 1/√d, then `context(q, k, v, valid, deterministic)` (each type's own
  pattern) -> `[B, T, H, D]`, then the output projection. Key-padding masks only."""

  supports_cross = False
  dense_mask = False

  def context(self, q, k, v, valid, deterministic):  # pragma: no cover - abstract
    raise NotImplementedError

  @nn.compact
  def __call__(
    self,
    inputs_q: jnp.ndarray,
    inputs_kv: jnp.ndarray | None = None,
    *,
    mask: jnp.ndarray | None = None,
    deterministic: bool = True,
  ) -> jnp.ndarray:
    """`inputs_q` `[B, T, D]`, key-padding `mask` `[B, 1, 1, T]` -> `[B, T, out_features]`."""
    check_self_attention(self.registry_name, inputs_q, inputs_kv)
    q, k, v = self.project_qkv(inputs_q, inputs_q)
    b, t, _, d = q.shape
    q = q * jnp.asarray(d**-0.5, q.dtype)
    context = self.context(q, k, v, key_validity(mask, t, b), deterministic)
    return self.project_out(context, inputs_q.shape[-1])


def pad_time(x: jnp.ndarray, multiple: int) -> jnp.ndarray:
  """Pad axis 1 (time) with zeros (False) up to a multiple of `multiple`."""
  pad = -x.shape[1] % multiple
  return jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) if pad else x


def block_size(window: int, length: int) -> int:
  """The block size w: the window, at least 1 and at most the length."""
  return max(1, min(window, length))


def neighbour_blocks(x: jnp.ndarray, w: int, right: bool = True) -> jnp.ndarray:
  """`[B, nb*w, ...]` -> `[B, nb, S, ...]`: for block n, blocks n−1, n (and n+1 if `right`);
  zeros (False) outside the sequence. S = 3w (2w without `right`)."""
  b, t = x.shape[:2]
  blocks = x.reshape(b, t // w, w, *x.shape[2:])
  padded = jnp.pad(blocks, [(0, 0), (1, 1)] + [(0, 0)] * (blocks.ndim - 2))
  parts = [padded[:, :-2], padded[:, 1:-1]] + ([padded[:, 2:]] if right else [])
  return jnp.concatenate(parts, axis=2)


def in_band(q_pos: jnp.ndarray, k_pos: jnp.ndarray, window: int, causal: bool) -> jnp.ndarray:
  """|i − j| <= window (causal: 0 <= i − j <= window) for broadcastable positions i, j."""
  offset = q_pos - k_pos
  band = jnp.abs(offset) <= window
  return band & (offset >= 0) if causal else band


def band_scores(
  q: jnp.ndarray, k: jnp.ndarray, valid: jnp.ndarray, window: int, causal: bool
) -> tuple[jnp.ndarray, jnp.ndarray, int]:
  """Blocked banded scores q·k (q already scaled).

  q, k `[B, T, H, D]`, valid `[B, T]` (key padding) -> scores `[B, nb, H, w, S]`, allowed
  `[B, nb, 1, w, S]` (band, causal, in the sequence and a valid key), and the block size w.
  """
  b, t, h, d = q.shape
  w = block_size(window, t)
  right = not causal
  q, k, valid = pad_time(q, w), pad_time(k, w), pad_time(valid, w)
  n = q.shape[1] // w
  pos = jnp.arange(n * w)
  k_pos = neighbour_blocks(pos[None], w, right)[0]  # [nb, S] (0 outside: masked by in_range)
  in_range = neighbour_blocks(jnp.ones((1, n * w), bool), w, right)[0]
  allowed = in_range[:, None, :] & in_band(pos.reshape(n, w, 1), k_pos[:, None, :], window, causal)
  allowed = allowed[None] & neighbour_blocks(valid, w, right)[:, :, None, :]  # [B, nb, w, S]
  scores = jnp.einsum("bnqhd,bnkhd->bnhqk", q.reshape(b, n, w, h, d), neighbour_blocks(k, w, right))
  return scores, allowed[:, :, None], w


def band_context(weights: jnp.ndarray, v: jnp.ndarray, w: int, causal: bool) -> jnp.ndarray:
  """Blocked weights `[B, nb, H, w, S]`, values `[B, T, H, D]` -> context `[B, T, H, D]`."""
  t = v.shape[1]
  vb = neighbour_blocks(pad_time(v, w), w, right=not causal)  # [B, nb, S, H, D]
  out = jnp.einsum("bnhqk,bnkhd->bnqhd", weights.astype(v.dtype), vb)
  b, n = out.shape[:2]
  return out.reshape(b, n * w, *out.shape[3:])[:, :t]


def band_to_dense(weights: jnp.ndarray, length: int, w: int) -> jnp.ndarray:
  """Blocked weights `[B, nb, H, w, S]` -> dense `[B, H, T, T]` (zero outside the band).

  O(T²): only for sowing the weights."""
  b, n, h, _, s = weights.shape
  rows = jnp.moveaxis(weights, 2, 1).reshape(b, h, n * w, s)[:, :, :length]  # [B, H, T, S]
  i, j = jnp.arange(length)[:, None], jnp.arange(length)[None, :]
  idx = j - (i // w - 1) * w  # the key's place among its query block's neighbours
  inside = (idx >= 0) & (idx < s)
  idx = jnp.broadcast_to(jnp.clip(idx, 0, s - 1), (b, h, length, length))
  return jnp.where(inside, jnp.take_along_axis(rows, idx, axis=-1), 0.0).astype(weights.dtype)


# ----------------------------------------------------------------------------- block-sparse


def split_blocks(x: jnp.ndarray, w: int) -> jnp.ndarray:
  """`[B, T, ...]` -> `[B, nb, w, ...]`, padded with zeros (False) to nb·w = ⌈T / w⌉·w."""
  x = pad_time(x, w)
  return x.reshape(x.shape[0], x.shape[1] // w, w, *x.shape[2:])


def gather_time(x: jnp.ndarray, pos: jnp.ndarray) -> jnp.ndarray:
  """`x` `[B, T, H, ...]`, per-head positions `pos` `[H, n, S]` -> `[B, n, H, S, ...]`."""
  h = x.shape[2]
  xt = jnp.moveaxis(x, 2, 1)  # [B, H, T, ...]
  return jnp.moveaxis(xt[:, jnp.arange(h)[:, None, None], pos], 1, 2)


def joint_softmax(*parts: tuple[jnp.ndarray, jnp.ndarray]) -> list[jnp.ndarray]:
  """`(scores, allowed)` pairs over different key sets (same leading axes, broadcastable) ->
  their weights, from one masked softmax over all the parts' keys together."""
  lead = jnp.broadcast_shapes(*(x.shape[:-1] for part in parts for x in part))
  full = lambda x: jnp.broadcast_to(x, lead + x.shape[-1:])  # noqa: E731
  scores = jnp.concatenate([full(s) for s, _ in parts], axis=-1)
  allowed = jnp.concatenate([full(a) for _, a in parts], axis=-1)
  sizes = np.cumsum([s.shape[-1] for s, _ in parts])[:-1]
  return jnp.split(normalize(scores, allowed), sizes, axis=-1)


def scatter_dense(
  weights: jnp.ndarray, q_pos: jnp.ndarray, k_pos: jnp.ndarray, q_len: int, kv_len: int
) -> jnp.ndarray:
  """Weights `[B, H, Q, S]` of the (query, key) pairs at positions `q_pos`, `k_pos`
  (broadcastable to the weights) -> dense `[B, H, q_len, kv_len]`; repeated pairs add up and
  pairs outside the sequence are dropped. O(T²): only for sowing the weights."""
  b, h = weights.shape[:2]
  qp = jnp.broadcast_to(q_pos, weights.shape)
  kp = jnp.broadcast_to(k_pos, weights.shape)
  inside = (qp >= 0) & (qp < q_len) & (kp >= 0) & (kp < kv_len)
  qp, kp = jnp.where(inside, qp, q_len), jnp.where(inside, kp, kv_len)
  bi = jnp.arange(b).reshape(b, 1, 1, 1)
  hi = jnp.arange(h).reshape(1, h, 1, 1)
  dense = jnp.zeros((b, h, q_len + 1, kv_len + 1), jnp.float32)
  dense = dense.at[bi, hi, qp, kp].add(weights.astype(jnp.float32))
  return dense[:, :, :q_len, :kv_len].astype(weights.dtype)


# ----------------------------------------------------------------------------- fixed randomness


def _path_hash(module: nn.Module) -> int:
  return zlib.crc32("/".join(module.scope.path).encode())


def layer_seed(module: nn.Module, seed: int) -> int:
  """An integer seed (for numpy) from `seed` and the module's path: every layer draws its own."""
  return (seed * 1_000_003 + _path_hash(module)) % 2**31


def layer_key(module: nn.Module, seed: int) -> jax.Array:
  """A fixed PRNG key from `seed` and the module's path (fixed draws, and the fallback when a
  call has no `attention` rng): every layer draws its own."""
  return jax.random.fold_in(jax.random.key(seed), _path_hash(module))


def constant(module: nn.Module, name: str, make: Callable[[], jnp.ndarray]) -> jnp.ndarray:
  """A non-trainable array in the `constants` collection: made by `make()` at init and stored;
  applied without that collection (e.g. with `{"params": ...}` only), `make()` runs again, so
  `make` must be deterministic (e.g. drawn from `layer_key`)."""
  if module.is_initializing() or module.has_variable(CONSTANTS, name):
    return module.variable(CONSTANTS, name, make).value
  return make()


def look_back(x: jnp.ndarray, axis: int, circular: bool) -> jnp.ndarray:
  """Blocks `[..., nb, w, ...]` (blocks on `axis`, positions on `axis + 1`) -> `[..., nb, 2w,
  ...]`: every block preceded by the previous one (circular: block 0 by the last; otherwise by
  zeros). A single circular block is returned alone (`[..., 1, w, ...]`)."""
  nb = x.shape[axis]
  if circular:
    if nb == 1:
      return x
    prev = jnp.roll(x, 1, axis=axis)
  else:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 0)
    prev = jax.lax.slice_in_dim(jnp.pad(x, pad), 0, nb, axis=axis)
  return jnp.concatenate([prev, x], axis=axis + 1)
