"""Matrix-product FLOPs of traced programs: loops counted per iteration, branches at their max."""

import jax
import jax.numpy as jnp
import pytest

from experiments.run import flops

A = jnp.ones((4, 8))
W = jnp.ones((8, 8))
ONE = 2 * 4 * 8 * 8  # [4, 8] x [8, 8]


def test_a_matmul_a_scan_and_a_cond_by_hand():
  assert flops.matmul_flops(jax.make_jaxpr(lambda a, w: a @ w)(A, W)) == ONE

  def scanned(a, w):
    return jax.lax.scan(lambda x, _: (x @ w, None), a, None, length=5)[0]

  assert flops.matmul_flops(jax.make_jaxpr(scanned)(A, W)) == 5 * ONE
  both = jax.make_jaxpr(lambda a, w: jax.grad(lambda w: scanned(a, w).sum())(w))(A, W)
  assert flops.matmul_flops(both) == 3 * 5 * ONE  # forward, and two products per step backward

  def branch(p, a, w):
    return jax.lax.cond(p, lambda: a @ w @ w, lambda: a @ w)

  assert flops.matmul_flops(jax.make_jaxpr(branch)(True, A, W)) == 2 * ONE
  jitted = jax.jit(lambda a, w: a @ w @ w)
  assert flops.matmul_flops(jitted.trace(A, W).jaxpr) == 2 * ONE  # through the pjit


def test_a_while_loop_has_no_static_count():
  def loop(a, w):
    return jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] @ w, c[1] + 1), (a, 0))[0]

  with pytest.raises(ValueError, match="while loop"):
    flops.matmul_flops(jax.make_jaxpr(loop)(A, W))
