"""Auxiliary router losses and the aux-loss-free bias update.

All take the router's float32 quantities; none depend on how dispatch runs.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from moejax.routing.types import RouterOutput, Routing, at_least_f32


def load_balance_loss(probs: jax.Array, choice_counts: jax.Array,
                      output_weights: Optional[Sequence[float]] = None) -> jax.Array:
  """Switch/GShard load balance: N * sum_i eta_i * f_i * P_i.

  f_i is the fraction of choices that went to output i (before capacity
  dropping), P_i the mean router probability of output i. Equals 1 under
  uniform routing, N when everything goes to one output, whatever top_k is.

  Porting a coefficient: transformers' Mixtral-style load_balancing_loss_func
  counts assignments per token (its fractions sum to top_k) and pools counts
  and probabilities over all layers before the product, while the trainer
  averages this loss over MoE layers. For one layer theirs = top_k x this, so
  their router_aux_loss_coef c is train.load_balance_weight = top_k * c here
  (exact per layer; across layers the pooling differs slightly). Switch
  Transformer (top-1) is this loss; GShard's is this over top-1 choices only.

  Args:
    probs: [T, N] per-token probabilities over the N router outputs.
    choice_counts: [N] how many choices each output received.
    output_weights: [N] eta_i, or None for all 1. MoE++'s heterogeneous
      load balance gives its zero-computation experts eta = tau
      (RouterConfig.balance_weights).
  """
  fraction = choice_counts / jnp.maximum(choice_counts.sum(), 1.0)
  terms = fraction * probs.mean(axis=0)
  if output_weights is not None:
    terms = terms * jnp.asarray(output_weights, terms.dtype)
  return probs.shape[-1] * jnp.sum(terms)


def router_z_loss(logits: jax.Array) -> jax.Array:
  """ST-MoE z-loss: mean over tokens of logsumexp(logits)^2. logits: [T, N]."""
  return jnp.mean(jnp.square(jax.nn.logsumexp(at_least_f32(logits), axis=-1)))


def importance_loss(probs: jax.Array) -> jax.Array:
  """V-MoE / Shazeer importance loss: squared coefficient of variation of the
  per-expert importance sum_t probs[t, i]. probs: [T, N]."""
  importance = probs.sum(axis=0)
  return jnp.var(importance) / jnp.maximum(jnp.square(jnp.mean(importance)), 1e-9)


def mutual_information_loss(probs: jax.Array) -> jax.Array:
  """DS-MoE's mutual-information loss: minus the mutual information between
  tokens and experts, mean_t H(probs[t]) - H(mean_t probs[t]) (nats).

  Lowest (-log N) when every token is sure of one output and the outputs are
  used evenly; 0 when every token has the same distribution. The first term
  sharpens routing, which keeps a densely trained layer close to its sparse
  inference; the second balances it. probs: [T, N].
  """
  entropy = lambda p: -jnp.sum(p * jnp.log(jnp.maximum(p, 1e-30)), axis=-1)
  return entropy(probs).mean() - entropy(probs.mean(axis=0))


def update_expert_bias(bias: jax.Array, tokens_per_expert: jax.Array, rate: float) -> jax.Array:
  """Aux-loss-free balancing (DeepSeek-V3): bias += rate * sign(mean_load - load).

  Overloaded experts get a lower selection bias, underloaded ones a higher.
  Args: bias: [E]; tokens_per_expert: [E]; rate: step size.
  """
  load = at_least_f32(tokens_per_expert)
  return bias + rate * jnp.sign(load.mean() - load)


# 'family': the router family's own loss (RouterOutput.family_loss), weighted
# by the family itself.
LOSS_NAMES = ("load_balance", "z_loss", "importance", "mutual_information", "family")


def zero_losses() -> dict:
  """Every aux loss at 0 (layers without a router, e.g. the dense baseline)."""
  return {name: jnp.zeros((), jnp.float32) for name in LOSS_NAMES}


def aux_losses(out: RouterOutput, balance_weights: Optional[Sequence[float]] = None) -> dict:
  """All aux losses of a RouterOutput, unweighted (scalars; 0 where a loss
  does not apply: no logits for hash, no balance loss for dense routing,
  only the z-loss (if logits) without probabilities: product keys).
  balance_weights: the load-balance loss's per-output eta
  (RouterConfig.balance_weights)."""
  zero = jnp.zeros((), jnp.float32)
  family = zero if out.family_loss is None else at_least_f32(out.family_loss)
  sparse = isinstance(out.routing, Routing)
  z_loss = router_z_loss(out.logits) if out.logits is not None else zero
  if out.probs is None:  # product-key retrieval: no distribution over all experts
    return {"load_balance": zero, "z_loss": z_loss, "importance": zero,
            "mutual_information": zero, "family": family}
  return {
      "load_balance": (load_balance_loss(out.probs, out.choice_counts, balance_weights)
                       if sparse else zero),
      "z_loss": z_loss,
      "importance": importance_loss(out.probs),
      "mutual_information": mutual_information_loss(out.probs),
      "family": family,
  }
