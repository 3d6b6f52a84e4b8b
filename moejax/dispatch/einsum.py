"""One-hot einsum dispatch (GShard / vmoe style): the readable reference.

Materialises [tokens, experts, slots] dispatch and combine tensors, so memory
and FLOPs grow with tokens * experts * capacity. Use it for clarity, tests
and Soft MoE; use 'gather' or 'dropless' for speed.
"""

from __future__ import annotations

import jax.numpy as jnp

from moejax.dispatch.base import DispatchStrategy, ExpertBatch


class EinsumDispatch(DispatchStrategy):
  name = "einsum"

  def dispatch(self, x, routing):
    dense = routing.to_dense()
    buckets = jnp.einsum("tec,td->ecd", dense.dispatch.astype(x.dtype), x)
    return ExpertBatch(x=buckets), dense

  def combine(self, y, routing, dense):
    return jnp.einsum("tec,ecd->td", dense.combine.astype(y.x.dtype), y.x)
