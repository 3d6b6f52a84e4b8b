"""MoE++ zero-computation experts (Jin et al. 2024): router outputs past the
routed experts that a token can choose like any expert but that run no FFN
and are never dispatched.

Router output columns: [0, E) routed experts, then num_null_experts null
experts (output 0), num_copy_experts copy experts (output x) and
num_constant_experts constant experts (output a1 x + a2 v_j; applied by
moejax.moe.ConstantExperts). The Routing marks these choices invalid, so the
grouped matmul never sees them; this module hands the layer the gate weight
each token gave each copy / constant expert.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from moejax.routing.config import RouterConfig


def zero_computation_weights(config: RouterConfig, expert_index: jax.Array, weight: jax.Array,
                             assigned: jax.Array) -> Optional[jax.Array]:
  """[T, num_copy_experts + num_constant_experts] gate weight (routed scaling
  included) of each token's copy and constant experts, copy first; None when
  the router has neither.

  Args: expert_index, weight, assigned: [T, K] the router's choices over all
  outputs (null-expert and zero-computation choices included)."""
  first = config.num_experts + config.num_null_experts
  count = config.num_copy_experts + config.num_constant_experts
  if not count:
    return None
  column = expert_index - first                                      # [T, K]
  hit = assigned & (column >= 0)
  onehot = jax.nn.one_hot(jnp.where(hit, column, count), count, dtype=weight.dtype)
  return jnp.einsum("tk,tkc->tc", weight * config.routed_scaling_factor, onehot)
