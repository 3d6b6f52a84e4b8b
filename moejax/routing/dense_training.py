"""DS-MoE (Pan et al. 2024, "Dense Training, Sparse Inference"): a layer
trained with every expert active and run with a sparse router.

On a training call of a layer with router.dense_training, every token goes to
every routed expert with its router score as the weight,

    y = sum_e w_e(x) * expert_e(x),   w = softmax(logits)[:E] (or sigmoid)
                                      x routed_scaling_factor,

so every expert and the whole router get a dense gradient. Inference calls
(deterministic) route with the router as configured: top_k, or XMoE's
threshold (router.name='threshold'). MoELayer dispatches a training call
with this routing but computes the aux losses and routing metrics from the
sparse rule's RouterOutput, so the load-balance loss and the balance metrics
describe the routing the model will be run with.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.routing.config import RouterConfig
from moejax.routing.token_choice import router_scores
from moejax.routing.types import Routing, at_least_f32


def dense_training_routing(logits: jax.Array, config: RouterConfig) -> Routing:
  """Every token -> every routed expert. logits: [T, E + null experts].
  Returns k = E columns, weight [T, E] the scores, position = the token's
  index (each expert takes all T tokens), capacity None."""
  logits = at_least_f32(logits)
  num_tokens, num_experts = logits.shape[0], config.num_experts
  weight = router_scores(logits, config)[:, :num_experts]
  if config.normalize_top_k:  # renormalised over the experts a token uses: all of them
    weight = weight / jnp.maximum(weight.sum(-1, keepdims=True), 1e-9)
  return Routing(
      expert_index=jnp.broadcast_to(jnp.arange(num_experts, dtype=jnp.int32),
                                    (num_tokens, num_experts)),
      weight=weight * config.routed_scaling_factor,
      position=jnp.broadcast_to(jnp.arange(num_tokens, dtype=jnp.int32)[:, None],
                                (num_tokens, num_experts)),
      valid=jnp.ones((num_tokens, num_experts), jnp.bool_),
      num_experts=num_experts,
      capacity=None)
