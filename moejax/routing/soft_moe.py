"""Soft MoE (Puigcerver et al. 2023): each expert slot is a softmax-weighted
mixture of all tokens, and each token a softmax-weighted mixture of all slots.
Nothing is dropped and the routing is dense.
"""

from __future__ import annotations

import jax

from moejax.config import RouterConfig
from moejax.routing.types import DenseRouting, RouterOutput, at_least_f32


def soft_moe_route(logits: jax.Array, config: RouterConfig) -> RouterOutput:
  """Args: logits: [T, E * slots] token-slot affinities (x @ phi)."""
  logits = at_least_f32(logits)
  num_tokens = logits.shape[0]
  shape = (num_tokens, config.num_experts, config.num_slots)
  dispatch = jax.nn.softmax(logits, axis=0).reshape(shape)  # sums to 1 over tokens
  combine = jax.nn.softmax(logits, axis=1).reshape(shape)  # sums to 1 over slots
  routing = DenseRouting(dispatch=dispatch, combine=combine)
  return RouterOutput(routing=routing, probs=combine.sum(-1),
                      choice_counts=dispatch.sum((0, 2)), logits=logits)
