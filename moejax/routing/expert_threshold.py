"""Causal expert choice by per-expert thresholds ('expert_threshold').

Expert choice (expert_choice.py) lets each expert take its top-C tokens of a
call, so in a decoder a token's experts depend on later tokens. Here each
expert e instead takes every token whose router probability reaches a
threshold tau_e:

    p = softmax(logits)                 [T, E]
    token t goes to expert e  iff  p[t, e] >= tau_e,   weight p[t, e]

so a token's experts depend on that token alone (causal, can generate token
by token). tau is not trained by gradients: it is a running estimate of the
cutoff expert choice would use, the C-th largest p[:, e] of a training call
with C = top_k * T / E (`batch_cutoff`), so each expert receives about
top_k * T / E tokens and a token about top_k experts on average, like expert
choice with capacity_factor = top_k. As in expert choice, a token may get
any number of experts, none included; nothing is dropped for capacity.

tau starts at 0 (every token to every expert) and `update_expert_threshold`
moves it after each training call: the running mean of the cutoffs for the
first 1 / rate calls, an exponential moving average with that rate after.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Optional, Tuple

import jax
import jax.numpy as jnp

from moejax.routing.family import Prepared, RouterFamily
from moejax.routing.types import Routing, RouterOutput, at_least_f32
from moejax.validation import check_float, fail

if TYPE_CHECKING:
  from moejax.routing.config import RouterConfig


@dataclasses.dataclass(frozen=True)
class ExpertThresholdOptions:
  """rate: the thresholds are the running mean of the training calls' cutoffs
  for the first 1 / rate calls, then an exponential moving average with this
  rate (0 = keep them fixed)."""

  rate: float = 0.01

  def __post_init__(self):
    check_float("router.expert_threshold.rate", self.rate, 0.0, True)
    if self.rate > 1:
      fail("router.expert_threshold.rate", self.rate, "must be in [0, 1]")


def expert_threshold_route(logits: jax.Array, config: RouterConfig,
                           expert_threshold: Optional[jax.Array] = None) -> RouterOutput:
  """Args: logits: [T, E]; expert_threshold: [E] tau (None = all zero).
  Returns a Routing with k = E (one column per expert), capacity None."""
  logits = at_least_f32(logits)
  num_tokens, num_experts = logits.shape
  probs = jax.nn.softmax(logits, axis=-1)
  tau = (jnp.zeros((num_experts,), probs.dtype) if expert_threshold is None
         else jax.lax.stop_gradient(expert_threshold).astype(probs.dtype))
  valid = probs >= tau[None, :]                                        # [T, E]
  # Slot of (t, e): how many earlier tokens expert e took (order of arrival).
  position = (jnp.cumsum(valid, axis=0) - 1).astype(jnp.int32)
  routing = Routing(
      expert_index=jnp.broadcast_to(jnp.arange(num_experts, dtype=jnp.int32),
                                    (num_tokens, num_experts)),
      weight=jnp.where(valid, probs * config.routed_scaling_factor, 0.0),
      position=jnp.where(valid, position, 0),
      valid=valid,
      num_experts=num_experts,
      capacity=None)
  counts = valid.sum(axis=0).astype(jnp.float32)
  return RouterOutput(routing=routing, probs=probs, choice_counts=counts, logits=logits)


def batch_cutoff(probs: jax.Array, top_k: int) -> jax.Array:
  """[E] the probability expert choice would cut each expert at: the C-th
  largest of probs[:, e] with C = ceil(top_k * T / E). probs: [T, E]."""
  num_tokens, num_experts = probs.shape
  capacity = min(max(-(-top_k * num_tokens // num_experts), 1), num_tokens)
  return jax.lax.top_k(jax.lax.stop_gradient(probs).T, capacity)[0][:, -1]


def update_expert_threshold(threshold: jax.Array, updates: jax.Array, cutoff: jax.Array,
                            rate: float) -> Tuple[jax.Array, jax.Array]:
  """tau += max(rate, 1 / (updates + 1)) * (cutoff - tau); returns (tau, updates + 1).

  threshold, cutoff: [E]; updates: [] int32 calls averaged so far."""
  step = jnp.maximum(rate, 1.0 / (updates.astype(jnp.float32) + 1.0))
  return threshold + step * (cutoff - threshold), updates + 1


def _prepare(module, config: RouterConfig, x, project, rng, token_ids) -> Prepared:
  """Logits; the thresholds (router_state), moved toward each training call's
  expert-choice cutoffs."""
  logits = project(x)
  threshold = module.variable("router_state", "expert_threshold", jnp.zeros,
                              (config.num_experts,), jnp.float32)
  updates = module.variable("router_state", "threshold_updates", jnp.zeros, (), jnp.int32)
  update = None
  if config.options.rate > 0:
    def update(out):
      threshold.value, updates.value = update_expert_threshold(
          threshold.value, updates.value, batch_cutoff(out.probs, config.top_k),
          config.options.rate)
  return Prepared(logits=logits, inputs={"expert_threshold": threshold.value}, update=update)


FAMILY = RouterFamily(
    name="expert_threshold", options=ExpertThresholdOptions, may_drop=False,
    reads=("routed_scaling_factor",), inputs=("expert_threshold",), prepare=_prepare,
    route=lambda logits, config, inputs: expert_threshold_route(
        logits, config, inputs.get("expert_threshold")),
    summary="causal expert choice: each expert takes the tokens whose probability reaches its "
            "running threshold")
