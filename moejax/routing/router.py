"""One entry point from a RouterConfig to the right router family."""

from __future__ import annotations

from typing import Optional

import jax

from moejax.config import RouterConfig
from moejax.routing.balanced import sinkhorn_route
from moejax.routing.expert_choice import expert_choice_route
from moejax.routing.hashing import hash_route
from moejax.routing.soft_moe import soft_moe_route
from moejax.routing.sparsemixer import sparsemixer_route
from moejax.routing.token_choice import threshold_route, top_k_route
from moejax.routing.types import RouterOutput


def route(config: RouterConfig, logits: Optional[jax.Array], *,
          token_ids: Optional[jax.Array] = None,
          expert_bias: Optional[jax.Array] = None,
          noise_std: Optional[jax.Array] = None,
          rng: Optional[jax.Array] = None) -> RouterOutput:
  """Routes T tokens.

  Args:
    config: the RouterConfig.
    logits: [T, config.num_router_outputs] (unused by 'hash').
    token_ids: [T] ints, required by 'hash'.
    expert_bias: [E] selection bias ('top_k' with use_expert_bias).
    noise_std: [T, outputs] logit-noise std (noisy top-k), used with `rng`.
    rng: PRNG key for stochastic routing (training); None = deterministic.
  """
  if config.name == "hash":
    if token_ids is None:
      raise ValueError("router.name='hash' needs token_ids=[tokens] ints; none were given")
    return hash_route(token_ids, config)
  if logits is None:
    raise ValueError(f"router.name={config.name!r} needs logits; none were given")
  if config.name == "top_k":
    return top_k_route(logits, config, expert_bias=expert_bias, noise_std=noise_std, rng=rng)
  if config.name == "threshold":
    return threshold_route(logits, config)
  if config.name == "expert_choice":
    return expert_choice_route(logits, config)
  if config.name == "soft_moe":
    return soft_moe_route(logits, config)
  if config.name == "sparsemixer":
    return sparsemixer_route(logits, config)
  return sinkhorn_route(logits, config)
