"""Soft MoE (Puigcerver et al. 2023): each expert slot is a softmax-weighted
mixture of all tokens, and each token a softmax-weighted mixture of all slots.
Nothing is dropped and the routing is dense.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Tuple

import jax

from moejax.routing.family import Prepared, RouterFamily
from moejax.routing.types import DenseRouting, RouterOutput, at_least_f32
from moejax.validation import check_choice, check_int, fail

if TYPE_CHECKING:
  from moejax.routing.config import RouterConfig

GROUPINGS = ("example", "call")


@dataclasses.dataclass(frozen=True)
class SoftMoEOptions:
  """num_slots: slots per expert (per example, with grouping='example').
  grouping: which tokens share a set of slots. 'example' (the paper's and
    vmoe's definition; the default): each sequence / image of the batch (the
    leading axis of the layer's input) has its own slots, so its output does
    not depend on its batch neighbours. 'call': all tokens of the call share
    one set of slots.
  normalize: vmoe's normalised Soft MoE: tokens and the slot parameters are
    L2-normalised over d_model and the logits multiplied by a learned scalar
    scale (initialised to 1), which keeps the softmaxes from saturating as
    d_model grows.
  """

  num_slots: int = 1
  grouping: str = "example"
  normalize: bool = False

  def __post_init__(self):
    check_int("router.soft_moe.num_slots", self.num_slots, 1)
    check_choice("router.soft_moe.grouping", self.grouping, GROUPINGS)


def soft_moe_route(logits: jax.Array, config: RouterConfig) -> RouterOutput:
  """Args: logits: [T, E * slots] token-slot affinities (x @ phi)."""
  logits = at_least_f32(logits)
  num_tokens = logits.shape[0]
  shape = (num_tokens, config.num_experts, config.options.num_slots)
  dispatch = jax.nn.softmax(logits, axis=0).reshape(shape)  # sums to 1 over tokens
  combine = jax.nn.softmax(logits, axis=1).reshape(shape)  # sums to 1 over slots
  routing = DenseRouting(dispatch=dispatch, combine=combine)
  return RouterOutput(routing=routing, probs=combine.sum(-1),
                      choice_counts=dispatch.sum((0, 2)), logits=logits)


def _check(config: RouterConfig) -> None:
  if config.routing_groups > 1:
    fail("router.routing_groups", config.routing_groups, "router.name='soft_moe' groups "
         "tokens by router.soft_moe.grouping; leave it 1")


def _groups(config: RouterConfig, shape: Tuple[int, ...]) -> int:
  """Per example: one group per row of the leading axis."""
  if config.options.grouping == "example" and len(shape) > 2:
    return shape[0]
  return config.routing_groups


FAMILY = RouterFamily(
    name="soft_moe", options=SoftMoEOptions, sparse=False, causal=False, may_drop=False,
    check=_check, routing_groups=_groups, experts_per_token=lambda config: 1,
    num_outputs=lambda config: config.num_experts * config.options.num_slots,
    capacity=lambda config, num_tokens: config.options.num_slots,
    prepare=lambda module, config, x, project, rng, token_ids: Prepared(
        logits=project(x, normalize=config.options.normalize)),
    route=lambda logits, config, inputs: soft_moe_route(logits, config),
    summary="Soft MoE: each slot is a softmax mixture of all tokens, each token a softmax "
            "mixture of all slots")
