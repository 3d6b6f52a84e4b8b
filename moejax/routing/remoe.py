"""ReMoE's ReLU routing ('remoe'; Wang, Chen and Zhu, "ReMoE: Fully
Differentiable Mixture-of-Experts with ReLU Routing", ICLR 2025).

The gate of expert e is a ReLU of its logit, with no top-k:

    g = ReLU(x W_r)                       [T, E]
    y = sum_e g_e * expert_e(x)           (only experts with g_e > 0 run)

so the routing is continuous in W_r and a token uses any number of experts.
Sparsity is controlled by an L1 penalty with an adaptive coefficient lambda,
which the training loss adds as this family's loss (lambda * L_reg):

    L_reg  = (1 / T) sum_t sum_e f_e g_te,  f_e = E / (k T) sum_t 1[g_te > 0]
             (the load-balanced form, `balanced`; f_e = 1 is the plain L1)
    S      = 1 - (1 / (T E)) sum_t sum_e 1[g_te > 0]          (sparsity)
    lambda <- lambda * alpha ** sign((1 - k / E) - S)         after each training call

with k = router.top_k the target number of active experts per token, so the
layer settles near k experts per token on average; f_e is a count and takes
no gradient.

Differences from the paper, each because this family lives in one layer:
lambda and S are per MoE layer (router_state of that layer), where the paper
keeps one lambda from the sparsity of all layers together; and the penalty
is averaged over the layers by the trainer as every aux loss is. Not
implemented: the paper's Megatron-specific pieces (expert-parallel
capacity), which moejax's dropless dispatch makes unnecessary.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from moejax.routing.family import Prepared, RouterFamily
from moejax.routing.types import Routing, RouterOutput, at_least_f32
from moejax.validation import check_float, fail

if TYPE_CHECKING:
  from moejax.routing.config import RouterConfig


@dataclasses.dataclass(frozen=True)
class ReMoEOptions:
  """alpha: lambda's multiplicative step (the paper's 1.2).
  initial_weight: lambda before the first training call (the paper's 1e-8).
  balanced: the load-balanced L1 penalty (f_e-weighted, the paper's
    default); False: the plain L1 norm of the gates.
  """

  alpha: float = 1.2
  initial_weight: float = 1e-8
  balanced: bool = True

  def __post_init__(self):
    check_float("router.remoe.alpha", self.alpha, 1.0, False)
    check_float("router.remoe.initial_weight", self.initial_weight, 0.0, False)


def relu_gates(logits: jax.Array) -> jax.Array:
  """[T, E] gates ReLU(logits)."""
  return jax.nn.relu(at_least_f32(logits))


def l1_penalty(gates: jax.Array, top_k: int, balanced: bool) -> jax.Array:
  """L_reg of [T, E] gates (see the module docstring)."""
  num_tokens, num_experts = gates.shape
  active = jax.lax.stop_gradient((gates > 0).astype(gates.dtype))
  if balanced:
    share = num_experts / (top_k * num_tokens) * active.sum(axis=0)      # f_e [E]
    return jnp.sum(gates * share[None, :]) / num_tokens
  return jnp.sum(gates) / num_tokens


def next_l1_weight(weight: jax.Array, valid: jax.Array, config: RouterConfig) -> jax.Array:
  """lambda * alpha ** sign(target - S), target = 1 - top_k / num_experts.

  target - S = (active - top_k T) / (T E) for `active` positive gates of
  [T, E] `valid`, so the sign is taken on integers: exact on target."""
  num_tokens = valid.shape[0]
  step = jnp.sign(valid.sum() - config.top_k * num_tokens).astype(weight.dtype)
  return weight * jnp.power(jnp.asarray(config.options.alpha, weight.dtype), step)


def remoe_route(logits: jax.Array, config: RouterConfig, l1_weight: jax.Array) -> RouterOutput:
  """logits: [T, E]; l1_weight: [] lambda. Returns a Routing with k = E
  columns (one per expert, valid where the gate is positive), capacity None,
  and lambda * L_reg as the family loss."""
  logits = at_least_f32(logits)
  num_tokens, num_experts = logits.shape
  gates = relu_gates(logits)
  valid = gates > 0
  position = (jnp.cumsum(valid, axis=0) - 1).astype(jnp.int32)  # arrival order per expert
  routing = Routing(
      expert_index=jnp.broadcast_to(jnp.arange(num_experts, dtype=jnp.int32),
                                    (num_tokens, num_experts)),
      weight=gates, position=jnp.where(valid, position, 0), valid=valid,
      num_experts=num_experts, capacity=None)
  penalty = l1_penalty(gates, config.top_k, config.options.balanced)
  return RouterOutput(routing=routing, probs=jax.nn.softmax(logits, axis=-1),
                      choice_counts=valid.sum(axis=0).astype(jnp.float32), logits=logits,
                      family_loss=jax.lax.stop_gradient(l1_weight) * penalty)


def _prepare(module, config: RouterConfig, x, project, rng, token_ids) -> Prepared:
  """Logits; lambda (router_state), moved after each training call."""
  logits = project(x)
  weight = module.variable("router_state", "l1_weight",
                           lambda: jnp.full((), config.options.initial_weight, jnp.float32))

  def update(out: RouterOutput) -> None:
    weight.value = next_l1_weight(weight.value, jax.lax.stop_gradient(out.routing.valid), config)

  return Prepared(logits=logits, inputs={"l1_weight": weight.value}, update=update)


def _check(config: RouterConfig) -> None:
  if config.top_k >= config.num_experts:
    fail("router.top_k", config.top_k, "router.name='remoe' targets top_k experts per token "
         f"on average: must be < num_experts={config.num_experts}")


FAMILY = RouterFamily(
    name="remoe", options=ReMoEOptions, may_drop=False, check=_check, prepare=_prepare,
    inputs=("l1_weight",),
    route=lambda logits, config, inputs: remoe_route(logits, config, inputs["l1_weight"]),
    summary="ReMoE: ReLU gates, no top-k; an adaptive L1 penalty keeps about top_k experts "
            "per token")
