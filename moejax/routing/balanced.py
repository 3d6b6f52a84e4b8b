"""BASE-style balanced assignment (Lewis et al. 2021), solved approximately
with Sinkhorn iterations instead of an exact auction.

The Sinkhorn plan (rows sum to 1, columns to T / E) decides the expert; the
gate is sigmoid(logit) of the chosen expert, as in BASE layers. The plan is
not differentiated: gradients reach the router through the gate only.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from moejax.routing.capacity import finish_assignments
from moejax.routing.family import RouterFamily
from moejax.routing.types import RouterOutput, at_least_f32
from moejax.validation import check_int, fail

if TYPE_CHECKING:
  from moejax.routing.config import RouterConfig


@dataclasses.dataclass(frozen=True)
class SinkhornOptions:
  """iterations: Sinkhorn iterations of the balanced assignment."""

  iterations: int = 8

  def __post_init__(self):
    check_int("router.sinkhorn.iterations", self.iterations, 1)


def sinkhorn_log_plan(logits: jax.Array, iterations: int) -> jax.Array:
  """[T, E] log of a transport plan with row sums 1 and column sums T / E."""
  num_tokens, num_experts = logits.shape
  log_col_mass = jnp.log(num_tokens / num_experts)

  def normalize(_, log_plan):
    log_plan = log_plan - jax.nn.logsumexp(log_plan, axis=0, keepdims=True) + log_col_mass
    return log_plan - jax.nn.logsumexp(log_plan, axis=1, keepdims=True)
  # A loop, not unrolled Python: compile time stays flat in the iteration count.
  return jax.lax.fori_loop(0, iterations, normalize, logits)


def sinkhorn_route(logits: jax.Array, config: RouterConfig) -> RouterOutput:
  """Args: logits: [T, E]."""
  logits = at_least_f32(logits)
  plan = jax.lax.stop_gradient(sinkhorn_log_plan(logits, config.options.iterations))
  expert_index = jnp.argmax(plan, axis=-1)[:, None]  # [T, 1]
  weight = jax.nn.sigmoid(jnp.take_along_axis(logits, expert_index, axis=-1))
  assigned = jnp.ones_like(expert_index, dtype=jnp.bool_)
  routing, counts = finish_assignments(config, expert_index, weight, assigned, logits.shape[0])
  return RouterOutput(routing=routing, probs=jax.nn.softmax(logits, axis=-1),
                      choice_counts=counts, logits=logits)


def _check(config: RouterConfig) -> None:
  if config.top_k != 1:
    fail("router.top_k", config.top_k, "router.name='sinkhorn' routes each token to 1 expert")


FAMILY = RouterFamily(
    name="sinkhorn", remappable=True, options=SinkhornOptions, reads=("routed_scaling_factor",),
    check=_check, causal=False, route=lambda logits, config, inputs: sinkhorn_route(logits, config),
    summary="BASE layers: a balanced assignment (Sinkhorn plan) picks each token's expert")
