"""FLOPs of a traced program: its matrix products and convolutions, loops counted per iteration.

XLA's cost analysis counts the body of a loop once, which undercounts every scanned model (an RNN
decoder, chunked attention); counting the traced jaxpr does not:

    matmul_flops(jax.jit(step).trace(state, batch).jaxpr)  # forward + backward of a train step
"""

import math

from jax.extend import core as jax_core


def matmul_flops(jaxpr) -> float:
  """2·(output size)·(contracted size) of every matrix product and convolution of a jaxpr (or
  ClosedJaxpr), the bodies of scans times their length (a fori_loop with static bounds is a
  scan), the costlier branch of a cond. A while loop has no static trip count: ValueError."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name in ("dot_general", "conv_general_dilated"):
      out = math.prod(eqn.outvars[0].aval.shape)
      if name == "dot_general":
        (contract, _), _ = eqn.params["dimension_numbers"]
        k = math.prod(eqn.invars[0].aval.shape[i] for i in contract)
      else:  # kernel size / output features (the kernel's out-feature axis: rhs_spec[0])
        rhs = eqn.invars[1].aval.shape
        k = math.prod(rhs) // rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
      total += 2.0 * out * k
      continue
    if name == "while":
      raise ValueError("a while loop: its trip count is not static")
    subs = [
      x.jaxpr if isinstance(x, jax_core.ClosedJaxpr) else x
      for v in eqn.params.values()
      for x in (v if isinstance(v, tuple | list) else (v,))
      if isinstance(x, jax_core.ClosedJaxpr | jax_core.Jaxpr)
    ]
    counts = [matmul_flops(j) for j in subs]
    if name == "cond":
      total += max(counts)
    else:
      total += eqn.params.get("length", 1) * sum(counts) if name == "scan" else sum(counts)
  return total
