"""Dropless dispatch: sort assignments by expert, compute groups, unsort.

No capacity: every valid assignment gets one row of a grouped [P, d] matrix
in which expert e's rows are contiguous. With `block_size` b > 1 each
expert's group starts on a multiple of b and is padded with zero rows to a
multiple of b, so the 'blocked' grouped matmul never splits a block between
experts (P = round_up(T*K, b) + E*b rows bound the padding; only used blocks
are computed). Combine reads each assignment's row back and applies the gate
weights. Both moves are gathers, forward and backward (permute.py); no
[tokens, experts, capacity] tensor exists anywhere. With `pallas=True` both
moves run on the fused Pallas permute / unpermute kernels instead
(pallas_kernels/permute.py: combine gathers, weights and sums in one pass).
"""

from __future__ import annotations

import jax.numpy as jnp

import pallas_kernels
from moejax.dispatch.base import DispatchStrategy, ExpertBatch
from moejax.dispatch.permute import combine_rows, gather_rows, inverse_slots
from moejax.routing.types import Routing


def round_up(n, multiple):
  return (n + multiple - 1) // multiple * multiple


def grouped_slots(routing: Routing, block_size: int):
  """Where each assignment goes in the grouped layout.

  Returns:
    slot: [T*K] int32 row of each assignment; num_rows for invalid ones.
    group_sizes: [E] int32 rows per expert (padded to block_size).
    num_rows: static P.
  """
  num_tokens, k = routing.expert_index.shape
  num_experts = routing.num_experts
  key = jnp.where(routing.valid, routing.expert_index, num_experts).reshape(-1)
  order = jnp.argsort(key, stable=True)  # sorted position -> assignment
  counts = jnp.bincount(key, length=num_experts + 1)[:-1].astype(jnp.int32)
  if block_size == 1:
    num_rows = num_tokens * k
    group_sizes = counts
  else:
    num_rows = round_up(num_tokens * k, block_size) + num_experts * block_size
    group_sizes = round_up(counts, block_size)
  sorted_start = jnp.cumsum(counts) - counts
  group_start = jnp.cumsum(group_sizes) - group_sizes
  sorted_key = key[order]
  expert = jnp.minimum(sorted_key, num_experts - 1)
  sorted_slot = group_start[expert] + jnp.arange(order.shape[0]) - sorted_start[expert]
  sorted_slot = jnp.where(sorted_key < num_experts, sorted_slot, num_rows)
  slot = jnp.zeros_like(sorted_slot).at[order].set(sorted_slot)
  return slot.astype(jnp.int32), group_sizes, num_rows


class DroplessDispatch(DispatchStrategy):
  name = "dropless"

  expert_parallel = True

  @classmethod
  def from_layout(cls, layout) -> "DroplessDispatch":
    """Rows padded per expert to layout.block_size; moved by the Pallas
    permute kernels when layout.fused_permute; read by the experts
    themselves when layout.gathered."""
    return cls(layout.block_size, layout.fused_permute, layout.gathered)

  def __init__(self, block_size: int = 1, pallas: bool = False, gathered: bool = False):
    if block_size < 1:
      raise ValueError(f"dropless block_size={block_size} is invalid: must be >= 1")
    self.block_size = block_size
    self.pallas = pallas
    self.gathered = gathered

  def __call__(self, x, routing, expert_fn):
    """With `gathered` and experts that read rows by index (an ExpertBank's
    gathered_rows), dispatch hands them the row -> token map and gate weight
    of each grouped row and builds no grouped copy; otherwise dispatch ->
    experts -> combine."""
    gathered_rows = getattr(expert_fn, "gathered_rows", None) if self.gathered else None
    if gathered_rows is None:
      return super().__call__(x, routing, expert_fn)
    routing = self.require_sparse(routing)
    num_tokens, k = routing.expert_index.shape
    slot, group_sizes, num_rows = grouped_slots(routing, self.block_size)
    assignment = inverse_slots(slot, num_rows)
    row_token = jnp.where(assignment < slot.shape[0], assignment // k, num_tokens)
    row_weight = jnp.take(routing.weight.reshape(-1), assignment, mode="fill", fill_value=0)
    return gathered_rows(x, row_token, row_weight, group_sizes).astype(x.dtype)

  def dispatch(self, x, routing):
    routing = self.require_sparse(routing)
    num_tokens, k = routing.expert_index.shape
    slot, group_sizes, num_rows = grouped_slots(routing, self.block_size)
    assignment = inverse_slots(slot, num_rows)
    # Row r holds token assignment[r] // k; padding rows read past the end -> 0.
    src = jnp.where(assignment < slot.shape[0], assignment // k, num_tokens)
    if self.pallas:
      rows = pallas_kernels.permute(x, src, slot.reshape(num_tokens, k))
    else:
      rows = gather_rows(x, src, slot.reshape(num_tokens, k))
    return ExpertBatch(x=rows, group_sizes=group_sizes), (slot, assignment)

  def combine(self, y, routing, residual):
    slot, assignment = residual
    num_tokens, k = routing.expert_index.shape
    if self.pallas:
      return pallas_kernels.unpermute(y.x, slot.reshape(num_tokens, k), routing.weight,
                                      assignment)
    return combine_rows(y.x, slot.reshape(num_tokens, k), routing.weight, assignment)
