"""One entry point from a RouterConfig to the right router family's route
function (the registry of what a family is lives in moejax.config.ROUTER_FAMILIES)."""

from __future__ import annotations

from typing import Callable, Dict, Optional

import jax

from moejax.config import ROUTER_FAMILIES, RouterConfig
from moejax.routing.balanced import sinkhorn_route
from moejax.routing.expert_choice import expert_choice_route
from moejax.routing.expert_threshold import expert_threshold_route
from moejax.routing.hashing import hash_route
from moejax.routing.product_keys import product_key_route
from moejax.routing.soft_moe import soft_moe_route
from moejax.routing.sparsemixer import sparsemixer_route
from moejax.routing.token_choice import threshold_route, top_k_route
from moejax.routing.types import RouterOutput


def _hash(logits, config, token_ids, **_):
  if token_ids is None:
    raise ValueError("router.name='hash' needs token_ids=[tokens] ints; none were given")
  return hash_route(token_ids, config)


# name -> (logits, config, *, token_ids, expert_bias, expert_threshold, sub_keys, noise_std,
# rng) -> RouterOutput;
# one entry per moejax.config.ROUTER_FAMILIES entry.
ROUTE_FNS: Dict[str, Callable[..., RouterOutput]] = {
    "top_k": lambda logits, config, expert_bias, noise_std, rng, **_: top_k_route(
        logits, config, expert_bias=expert_bias, noise_std=noise_std, rng=rng),
    "threshold": lambda logits, config, **_: threshold_route(logits, config),
    "sparsemixer": lambda logits, config, **_: sparsemixer_route(logits, config),
    "hash": _hash,
    "expert_choice": lambda logits, config, **_: expert_choice_route(logits, config),
    "expert_threshold": lambda logits, config, expert_threshold, **_: expert_threshold_route(
        logits, config, expert_threshold),
    "product_key": lambda logits, config, sub_keys, **_: product_key_route(
        logits, sub_keys, config),
    "sinkhorn": lambda logits, config, **_: sinkhorn_route(logits, config),
    "soft_moe": lambda logits, config, **_: soft_moe_route(logits, config),
}
assert set(ROUTE_FNS) == set(ROUTER_FAMILIES), "every router family needs a route function"


def route(config: RouterConfig, logits: Optional[jax.Array], *,
          token_ids: Optional[jax.Array] = None,
          expert_bias: Optional[jax.Array] = None,
          expert_threshold: Optional[jax.Array] = None,
          sub_keys: Optional[jax.Array] = None,
          noise_std: Optional[jax.Array] = None,
          rng: Optional[jax.Array] = None) -> RouterOutput:
  """Routes T tokens.

  Args:
    config: the RouterConfig.
    logits: [T, config.num_router_outputs] (unused by 'hash').
    token_ids: [T] ints, required by 'hash'.
    expert_bias: [E] selection bias ('top_k' with use_expert_bias).
    expert_threshold: [E] per-expert thresholds ('expert_threshold').
    sub_keys: [heads, 2, n, key_dim / 2] product-key tables ('product_key',
      whose logits are the queries [T, heads * key_dim]).
    noise_std: [T, outputs] logit-noise std (noisy top-k), used with `rng`.
    rng: PRNG key for stochastic routing (training); None = deterministic.
  """
  if logits is None and config.name != "hash":
    raise ValueError(f"router.name={config.name!r} needs logits; none were given")
  return ROUTE_FNS[config.name](logits, config, token_ids=token_ids, expert_bias=expert_bias,
                                expert_threshold=expert_threshold, sub_keys=sub_keys,
                                noise_std=noise_std, rng=rng)
