"""Token-choice routers: each token picks its experts.

Covers Switch/GShard (softmax, then top-k), Mixtral (top-k, then softmax),
DeepSeek-V3 (sigmoid scores, renormalised, routed scaling, group-limited
top-k, selection-only expert bias), noisy top-k, GShard's sampled second
expert, null / copy / constant experts (AdaMoE / MoE++; zero_computation.py),
and, through the shared helpers, XMoE's threshold routing (threshold.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from moejax.routing.capacity import finish_assignments
from moejax.routing.config import TOKEN_CHOICE_FIELDS
from moejax.routing.family import Prepared, RouterFamily
from moejax.routing.losses import update_expert_bias
from moejax.routing.types import RouterOutput, at_least_f32
from moejax.routing.zero_computation import zero_computation_weights

if TYPE_CHECKING:
  from moejax.routing.config import RouterConfig


def router_scores(logits: jax.Array, config: RouterConfig) -> jax.Array:
  """Per-output scores: softmax over the outputs, or elementwise sigmoid."""
  if config.score_fn == "sigmoid":
    return jax.nn.sigmoid(logits)
  return jax.nn.softmax(logits, axis=-1)


def _group_limit(selection: jax.Array, config: RouterConfig) -> jax.Array:
  """Masks experts outside each token's `top_k_groups` best groups to -inf.

  A group's score is the sum of its two best selection scores (its best when
  groups have one expert), as in DeepSeek-V3, or with group_score='max' its
  best score, as in DeepSeek-V2.
  """
  num_tokens, num_experts = selection.shape
  groups = config.num_expert_groups
  grouped = selection.reshape(num_tokens, groups, num_experts // groups)
  best = jax.lax.top_k(grouped, 1 if config.group_score == "max" else
                       min(2, num_experts // groups))[0]
  _, top_groups = jax.lax.top_k(best.sum(-1), config.top_k_groups)  # [T, top_k_groups]
  group_mask = jax.nn.one_hot(top_groups, groups, dtype=jnp.bool_).any(axis=1)  # [T, G]
  expert_mask = jnp.repeat(group_mask, num_experts // groups, axis=1)
  return jnp.where(expert_mask, selection, -jnp.inf)


def _loss_probs(scores: jax.Array, config: RouterConfig) -> jax.Array:
  """Per-token distribution over outputs, for losses and entropy."""
  if config.score_fn == "sigmoid":
    return scores / jnp.maximum(scores.sum(-1, keepdims=True), 1e-9)
  return scores


def top_k_route(logits: jax.Array, config: RouterConfig, *,
                expert_bias: Optional[jax.Array] = None,
                noise_std: Optional[jax.Array] = None,
                rng: Optional[jax.Array] = None) -> RouterOutput:
  """Token-choice top-k routing.

  Args:
    logits: [T, E + null experts] router logits.
    config: a RouterConfig with name 'top_k'.
    expert_bias: optional [E] bias added to scores for selection only.
    noise_std: optional [T, E + null] std of logit noise (noisy top-k);
      used only when `rng` is given.
    rng: PRNG key for noise and second-expert sampling; None = deterministic.
  """
  logits = at_least_f32(logits)
  num_tokens = logits.shape[0]
  if rng is not None:
    noise_rng, sample_rng = jax.random.split(rng)
  if noise_std is not None and rng is not None:
    logits = logits + jax.random.normal(noise_rng, logits.shape) * noise_std
  scores = router_scores(logits, config)
  selection = scores
  if expert_bias is not None:
    pad = config.num_router_outputs - config.num_experts
    selection = selection + jnp.pad(expert_bias.astype(selection.dtype), (0, pad))
  if config.num_expert_groups > 1:
    selection = _group_limit(selection, config)
  _, expert_index = jax.lax.top_k(selection, config.top_k)  # [T, K]
  if config.normalize_top_k and config.score_fn == "softmax":
    weight = jax.nn.softmax(jnp.take_along_axis(logits, expert_index, axis=-1), axis=-1)
  else:
    weight = jnp.take_along_axis(scores, expert_index, axis=-1)
    if config.normalize_top_k:
      weight = weight / jnp.maximum(weight.sum(-1, keepdims=True), 1e-9)
  assigned = jnp.ones_like(expert_index, dtype=jnp.bool_)
  if config.second_expert_sampling and rng is not None:
    share = weight[:, 1] / jnp.maximum(weight[:, 0] + weight[:, 1], 1e-9)
    keep = jax.random.uniform(sample_rng, (num_tokens,)) < 2.0 * share
    assigned = assigned.at[:, 1].set(keep)
  routing, counts = finish_assignments(config, expert_index, weight, assigned, num_tokens)
  return RouterOutput(routing=routing, probs=_loss_probs(scores, config),
                      choice_counts=counts, logits=logits,
                      zero_computation_weight=zero_computation_weights(
                          config, expert_index, weight, assigned))


def _prepare(module, config: RouterConfig, x, project, rng, token_ids) -> Prepared:
  """Logits, then the noise kernel (noisy_top_k) and the selection bias
  (use_expert_bias, updated from each training call's load)."""
  logits = project(x)
  inputs, update = {}, None
  if rng is not None:
    inputs["rng"] = rng
  if config.noisy_top_k:
    noise_kernel = module.param("noise_kernel", nn.initializers.zeros,
                                (x.shape[-1], config.num_router_outputs))
    inputs["noise_std"] = jax.nn.softplus(x @ noise_kernel)
  if config.use_expert_bias:
    bias = module.variable("router_state", "expert_bias", jnp.zeros, (config.num_experts,),
                           jnp.float32)
    inputs["expert_bias"] = bias.value
    if config.expert_bias_update_rate > 0:
      def update(out):
        load = jax.lax.stop_gradient(out.routing.tokens_per_expert())
        bias.value = update_expert_bias(bias.value, load, config.expert_bias_update_rate)
  return Prepared(logits=logits, inputs=inputs, update=update)


def _route(logits, config: RouterConfig, inputs: Mapping[str, jax.Array]) -> RouterOutput:
  return top_k_route(logits, config, expert_bias=inputs.get("expert_bias"),
                     noise_std=inputs.get("noise_std"), rng=inputs.get("rng"))


FAMILY = RouterFamily(
    name="top_k", remappable=True, route=_route, prepare=_prepare, reads=TOKEN_CHOICE_FIELDS,
    inputs=("rng", "noise_std", "expert_bias"), per_token_inputs=("noise_std",),
    summary="token choice: Switch, GShard, Mixtral, DeepSeek-V3 (softmax or sigmoid scores, "
            "groups, selection bias, noise, zero-computation experts)")
