"""Slot positions inside each expert's buffer, and dropping past capacity.

Assignments are ranked first by choice (every token's first choice before any
second choice, as in GShard), then within a choice either by token order
('position') or by descending router confidence ('probability', V-MoE's
batch-prioritised routing). A token's slot is the number of assignments to
the same expert ahead of it. Done with one stable sort, so memory is
O(tokens * k), never O(tokens * experts * capacity).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from moejax.routing.config import RouterConfig
from moejax.routing.types import Routing


def assign_positions(expert_index: jax.Array, assigned: jax.Array, num_experts: int,
                     capacity: Optional[int], priority: Optional[jax.Array] = None):
  """Returns (position [T, K] int32, valid [T, K] bool).

  Args:
    expert_index: [T, K] int expert chosen by each assignment.
    assigned: [T, K] bool; False entries take no slot (null expert, unused).
    num_experts: E.
    capacity: slots per expert; None keeps every assigned entry.
    priority: optional [T] float; higher goes first within a choice rank.
      None = token order.
  """
  num_tokens, k = expert_index.shape
  if priority is None:
    token_order = jnp.arange(num_tokens)
  else:
    token_order = jnp.argsort(-priority, stable=True)
  # Flatten in priority order: choice-major, then token order. [K * T]
  key = jnp.where(assigned, expert_index, num_experts)[token_order].T.reshape(-1)
  sort_idx = jnp.argsort(key, stable=True)
  group_start = jnp.searchsorted(key[sort_idx], jnp.arange(num_experts + 1), side="left")
  rank = jnp.zeros_like(sort_idx).at[sort_idx].set(jnp.arange(key.shape[0]))
  pos_in_order = (rank - group_start[key]).reshape(k, num_tokens).T  # [T(ordered), K]
  position = jnp.zeros((num_tokens, k), jnp.int32).at[token_order].set(
      pos_in_order.astype(jnp.int32))
  valid = assigned if capacity is None else assigned & (position < capacity)
  return position, valid


def finish_assignments(config: RouterConfig, expert_index, weight, assigned, num_tokens):
  """Routed scaling, capacity and choice counts for routers whose tokens pick
  their experts (top-k, threshold, Sinkhorn, hash); returns (Routing, counts).

  `assigned` [T, K] marks choices actually taken (null-expert choices
  included: they count as choices but take no slot).
  """
  weight = weight * config.routed_scaling_factor
  outputs = config.num_router_outputs
  choice_counts = jnp.zeros((outputs,), jnp.float32).at[expert_index].add(assigned)
  real = assigned & (expert_index < config.num_experts)
  priority = weight.max(axis=-1) if config.drop_policy == "probability" else None
  capacity = config.capacity(num_tokens)
  position, valid = assign_positions(expert_index, real, config.num_experts, capacity, priority)
  routing = Routing(
      expert_index=jnp.where(valid, expert_index, 0).astype(jnp.int32),
      weight=jnp.where(valid, weight, 0.0),
      position=jnp.where(valid, position, 0),
      valid=valid,
      num_experts=config.num_experts,
      capacity=capacity)
  return routing, choice_counts
