"""Expert choice (Zhou et al. 2022): every expert takes its top-C tokens.

Balanced by construction: each expert receives exactly C tokens; a token may
be taken by any number of experts, including none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import jax
import jax.numpy as jnp

from moejax.routing.family import RouterFamily
from moejax.routing.types import Routing, RouterOutput, at_least_f32
from moejax.validation import fail

if TYPE_CHECKING:
  from moejax.routing.config import RouterConfig


def expert_choice_route(logits: jax.Array, config: RouterConfig) -> RouterOutput:
  """Args: logits: [T, E]. Returns a Routing with k = E (one column per expert)."""
  logits = at_least_f32(logits)
  num_tokens, num_experts = logits.shape
  capacity = config.capacity(num_tokens)
  probs = jax.nn.softmax(logits, axis=-1)  # token's distribution over experts
  _, chosen = jax.lax.top_k(probs.T, capacity)  # [E, C] token ids, best first
  expert_ids = jnp.broadcast_to(jnp.arange(num_experts)[:, None], chosen.shape)
  valid = jnp.zeros((num_experts, num_tokens), jnp.bool_).at[expert_ids, chosen].set(True).T
  slot = jnp.broadcast_to(jnp.arange(capacity, dtype=jnp.int32)[None, :], chosen.shape)
  position = jnp.zeros((num_experts, num_tokens), jnp.int32).at[expert_ids, chosen].set(slot).T
  routing = Routing(
      expert_index=jnp.broadcast_to(jnp.arange(num_experts, dtype=jnp.int32),
                                    (num_tokens, num_experts)),
      weight=jnp.where(valid, probs, 0.0),
      position=position,
      valid=valid,
      num_experts=num_experts,
      capacity=capacity)
  counts = jnp.full((num_experts,), float(capacity))
  return RouterOutput(routing=routing, probs=probs, choice_counts=counts, logits=logits)


def _capacity(config: RouterConfig, num_tokens: int) -> Optional[int]:
  """Tokens per expert: ceil(capacity_factor * tokens / experts), at least
  min_capacity, at most the tokens."""
  slots = -(-config.capacity_factor * num_tokens // config.num_experts)  # ceil
  return min(max(int(slots), config.min_capacity), num_tokens)


def _check(config: RouterConfig) -> None:
  if config.capacity_factor is None:
    fail("router.capacity_factor", None,
         "router.name='expert_choice' needs a number > 0 (average experts per token)")


FAMILY = RouterFamily(
    name="expert_choice", remappable=True, causal=False, check=_check, capacity=_capacity,
    experts_per_token=lambda config: config.capacity_factor,
    route=lambda logits, config, inputs: expert_choice_route(logits, config),
    summary="each expert takes its top-C tokens of the call (balanced by construction)")
