"""Routing metrics: who got how much, what was dropped, how sure the router is."""

from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp

from moejax.routing.types import Routing, RouterOutput


def routing_metrics(out: RouterOutput) -> Dict[str, jax.Array]:
  """Returns:
    tokens_per_expert: [E] assignments each expert processes (dispatch mass
      for dense routing).
    weight_per_expert: [E] gate weight of those assignments (combine mass for
      dense routing): what expert pruning ranks by (moejax/compress).
    fraction_dropped: share of real-expert choices dropped for capacity.
    fraction_null: share of choices that went to zero-computation experts
      (null, copy and constant: no FFN ran for them).
    router_entropy: mean per-token entropy of the router distribution (nats;
      for product keys, of the normalised weights of the chosen experts).
    balance: max load / mean load (1 = perfectly balanced).
    experts_per_token: routed experts a token is processed by, on average
      (after drops; variable for threshold, expert-threshold and ReMoE
      routing; every expert for dense routing).
  """
  load = out.routing.tokens_per_expert()
  num_experts = load.shape[0]
  chosen_real = out.choice_counts[:num_experts].sum()
  if isinstance(out.routing, Routing):
    dropped = 1.0 - load.sum() / jnp.maximum(chosen_real, 1.0)
    per_token = out.routing.valid.sum(-1).astype(jnp.float32).mean()
  else:
    dropped = jnp.zeros(())
    per_token = jnp.asarray(float(num_experts))
  null = out.choice_counts[num_experts:].sum() / jnp.maximum(out.choice_counts.sum(), 1.0)
  probs = out.probs
  if probs is None:  # product keys: the entropy of the chosen experts' weights
    probs = jnp.where(out.routing.valid, out.routing.weight, 0.0)
    probs = probs / jnp.maximum(probs.sum(-1, keepdims=True), 1e-9)
  entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.maximum(probs, 1e-30)), 0.0), -1)
  return {
      "tokens_per_expert": load,
      "weight_per_expert": out.routing.weight_per_expert(),
      "fraction_dropped": dropped,
      "fraction_null": null,
      "router_entropy": entropy.mean(),
      "balance": load.max() / jnp.maximum(load.mean(), 1e-9),
      "experts_per_token": per_token,
  }
