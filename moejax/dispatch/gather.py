"""Capacity-bucketed dispatch by index gather: no one-hot tensors.

Each valid assignment owns slot (expert, position) of an [E, C, d] buffer.
Dispatch gathers token rows into the buffer; combine gathers each
assignment's output row back and sums them with the gate weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.dispatch.base import DispatchStrategy, ExpertBatch
from moejax.dispatch.permute import combine_rows, inverse_slots
from moejax.routing.types import Routing


def _slot_ids(routing: Routing) -> jax.Array:
  """[T * K] flat slot of each assignment; invalid ones point past the end."""
  slots = routing.buffer_size()
  flat = routing.expert_index * slots + routing.position
  return jnp.where(routing.valid, flat, routing.num_experts * slots).reshape(-1)


class GatherDispatch(DispatchStrategy):
  name = "gather"
  expert_parallel = True

  def dispatch(self, x, routing):
    routing = self.require_sparse(routing)
    num_tokens, k = routing.expert_index.shape
    slots = routing.buffer_size()
    total = routing.num_experts * slots
    slot_ids = _slot_ids(routing)
    token_ids = jnp.repeat(jnp.arange(num_tokens), k)
    # Which token fills each slot (an extra dump slot absorbs invalid ones).
    token_of_slot = jnp.zeros((total + 1,), jnp.int32).at[slot_ids].set(token_ids)[:total]
    filled = jnp.zeros((total + 1,), jnp.bool_).at[slot_ids].set(True)[:total]
    buckets = jnp.where(filled[:, None], x[token_of_slot], 0)
    return ExpertBatch(x=buckets.reshape(routing.num_experts, slots, -1)), slot_ids

  def combine(self, y, routing, slot_ids):
    num_tokens, k = routing.expert_index.shape
    rows = y.x.reshape(-1, y.x.shape[-1])
    assignment = inverse_slots(slot_ids, rows.shape[0])
    return combine_rows(rows, slot_ids.reshape(num_tokens, k), routing.weight, assignment)
