"""XMoE's threshold (dynamic-k) routing ('threshold'; Yang et al. 2024): a
token takes its best experts in order until their cumulative probability
reaches `probability`, at least 1 and at most `top_k`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Mapping

import jax
import jax.numpy as jnp

from moejax.routing.capacity import finish_assignments
from moejax.routing.family import RouterFamily
from moejax.routing.types import RouterOutput, at_least_f32
from moejax.routing.zero_computation import zero_computation_weights
from moejax.validation import check_float, fail

if TYPE_CHECKING:
  from moejax.routing.config import RouterConfig


@dataclasses.dataclass(frozen=True)
class ThresholdOptions:
  """probability: the cumulative-probability threshold in (0, 1]."""

  probability: float = 0.5

  def __post_init__(self):
    check_float("router.threshold.probability", self.probability, 0.0, False)
    if self.probability > 1:
      fail("router.threshold.probability", self.probability, "must be in (0, 1]")


def threshold_route(logits: jax.Array, config: RouterConfig) -> RouterOutput:
  """logits: [T, E + null experts] router logits."""
  logits = at_least_f32(logits)
  probs = jax.nn.softmax(logits, axis=-1)
  top_probs, expert_index = jax.lax.top_k(probs, config.top_k)  # [T, K] descending
  mass_before = jnp.cumsum(top_probs, axis=-1) - top_probs
  assigned = mass_before < config.options.probability  # the first is always taken
  weight = jnp.where(assigned, top_probs, 0.0)
  if config.normalize_top_k:
    weight = weight / jnp.maximum(weight.sum(-1, keepdims=True), 1e-9)
  routing, counts = finish_assignments(config, expert_index, weight, assigned, logits.shape[0])
  return RouterOutput(routing=routing, probs=probs, choice_counts=counts, logits=logits,
                      zero_computation_weight=zero_computation_weights(
                          config, expert_index, weight, assigned))


def _route(logits, config: RouterConfig, inputs: Mapping[str, jax.Array]) -> RouterOutput:
  return threshold_route(logits, config)


FAMILY = RouterFamily(
    name="threshold", remappable=True, route=_route, options=ThresholdOptions,
    reads=("routed_scaling_factor", "num_null_experts", "num_copy_experts",
           "num_constant_experts", "gating_residual", "dense_training",
           "zero_computation_balance_weight"),
    summary="XMoE dynamic-k: experts until their cumulative probability reaches "
            "router.threshold.probability, at most top_k")
