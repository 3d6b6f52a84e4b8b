"""Dropless dispatch: sort assignments by expert, compute groups, unsort.

No capacity buffer: every valid assignment becomes one row of an [T * K, d]
matrix sorted by expert (invalid ones sort to the end as padding), which the
experts process as a grouped matmul with per-expert group sizes. Combine
applies the inverse permutation and the gate weights.
"""

from __future__ import annotations

import jax.numpy as jnp

from moejax.dispatch.base import DispatchStrategy, ExpertBatch


class DroplessDispatch(DispatchStrategy):
  name = "dropless"

  def dispatch(self, x, routing):
    routing = self.require_sparse(routing)
    num_tokens, k = routing.expert_index.shape
    key = jnp.where(routing.valid, routing.expert_index, routing.num_experts).reshape(-1)
    order = jnp.argsort(key, stable=True)  # [T * K] assignment at each sorted row
    group_sizes = jnp.bincount(key, length=routing.num_experts + 1)[:-1].astype(jnp.int32)
    rows = x[order // k]
    return ExpertBatch(x=rows, group_sizes=group_sizes), order

  def combine(self, y, routing, order):
    num_tokens, k = routing.expert_index.shape
    inverse = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
    per_assignment = y.x[inverse].reshape(num_tokens, k, -1)
    return jnp.einsum("tkd,tk->td", per_assignment, routing.weight.astype(y.x.dtype))
