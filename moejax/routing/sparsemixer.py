"""SparseMixer top-k routing (Liu et al. 2023; the router of Phi-3.5-MoE).

Experts are picked one at a time, best remaining logit first. The weight of a
pick is a softmax over only the experts whose logit is within a relative gap
of it: an expert e stays in that softmax when

    (best - logit_e) / max(|logit_e|, best) <= 2 * eps

(eps = router.sparsemixer.eps), so a confident pick gets weight close to 1 and
near-ties share it. Earlier picks are out of later softmaxes.

This is the deterministic (inference) rule. Training uses the same selection,
with plain gradients through the weights; the paper's sampled selection and
its Heun-method gradient estimator are not implemented.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from moejax.routing.capacity import finish_assignments
from moejax.routing.family import RouterFamily
from moejax.routing.types import RouterOutput, at_least_f32
from moejax.validation import check_float

if TYPE_CHECKING:
  from moejax.routing.config import RouterConfig


@dataclasses.dataclass(frozen=True)
class SparseMixerOptions:
  """eps: relative logit gap (x2) inside which experts share a pick's weight
  (Phi-3.5-MoE's router_jitter_noise, 0.01)."""

  eps: float = 0.01

  def __post_init__(self):
    check_float("router.sparsemixer.eps", self.eps, 0.0, True)


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
    outside = (jax.lax.stop_gradient(best) - logits) / factor > 2 * config.options.eps
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


FAMILY = RouterFamily(
    name="sparsemixer", remappable=True, options=SparseMixerOptions,
    reads=("routed_scaling_factor",),
    route=lambda logits, config, inputs: sparsemixer_route(logits, config),
    summary="Phi-3.5-MoE: experts picked one by one, each weighted by a softmax over the "
            "near-tied logits")
