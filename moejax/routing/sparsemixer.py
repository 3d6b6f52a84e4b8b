"""SparseMixer top-k routing (Liu et al. 2023; the router of Phi-3.5-MoE).

Experts are picked one at a time, best remaining logit first. The weight of a
pick is a softmax over only the experts whose logit is within a relative gap
of it: an expert e stays in that softmax when

    (best - logit_e) / max(|logit_e|, best) <= 2 * eps

(eps = router.sparsemixer_eps), so a confident pick gets weight close to 1 and
near-ties share it. Earlier picks are out of later softmaxes.

This is the deterministic (inference) rule. Training uses the same selection,
with plain gradients through the weights; the paper's sampled selection and
its Heun-method gradient estimator are not implemented.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.config import RouterConfig
from moejax.routing.capacity import finish_assignments
from moejax.routing.types import RouterOutput, at_least_f32


def sparsemixer_route(logits: jax.Array, config: RouterConfig) -> RouterOutput:
  """logits: [T, E] -> top-k SparseMixer routing (see module docstring)."""
  logits = at_least_f32(logits)
  num_tokens = logits.shape[0]
  remaining = logits
  indices, weights = [], []
  for _ in range(config.top_k):
    best = remaining.max(axis=-1, keepdims=True)                       # [T, 1]
    pick = jnp.argmax(remaining, axis=-1)                              # [T]
    # The gap test is on the logits themselves; the clamp keeps it relative.
    factor = jnp.maximum(jnp.abs(logits), best)
    outside = (jax.lax.stop_gradient(best) - logits) / factor > 2 * config.sparsemixer_eps
    gates = jax.nn.softmax(jnp.where(outside, -jnp.inf, remaining), axis=-1)
    weights.append(jnp.take_along_axis(gates, pick[:, None], axis=-1)[:, 0])
    indices.append(pick)
    remaining = jnp.where(jax.nn.one_hot(pick, logits.shape[-1], dtype=jnp.bool_),
                          -jnp.inf, remaining)
  expert_index = jnp.stack(indices, axis=-1).astype(jnp.int32)        # [T, K]
  weight = jnp.stack(weights, axis=-1)                                 # [T, K]
  assigned = jnp.ones_like(expert_index, dtype=jnp.bool_)
  routing, counts = finish_assignments(config, expert_index, weight, assigned, num_tokens)
  return RouterOutput(routing=routing, probs=jax.nn.softmax(logits, axis=-1),
                      choice_counts=counts, logits=logits)
