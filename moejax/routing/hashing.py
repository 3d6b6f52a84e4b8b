"""Hash routing (Roller et al. 2021): a fixed hash of the token id picks the
expert. No learned router; the gate is 1.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from moejax.routing.capacity import finish_assignments
from moejax.routing.family import Prepared, RouterFamily
from moejax.routing.types import RouterOutput
from moejax.validation import check_int, fail

if TYPE_CHECKING:
  from moejax.routing.config import RouterConfig


@dataclasses.dataclass(frozen=True)
class HashOptions:
  """seed: seed of the fixed token-id -> expert hash."""

  seed: int = 0

  def __post_init__(self):
    check_int("router.hash.seed", self.seed, 0)


def hash_expert(token_ids: jax.Array, num_experts: int, seed: int = 0) -> jax.Array:
  """[T] int32 expert per token id: a multiplicative (Knuth) hash, then mod E."""
  x = token_ids.astype(jnp.uint32) + jnp.uint32(seed * 0x9E3779B9 % 2**32)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  x = x ^ (x >> 16)
  return (x % jnp.uint32(num_experts)).astype(jnp.int32)


def hash_route(token_ids: jax.Array, config: RouterConfig) -> RouterOutput:
  """Args: token_ids: [T] integer token ids."""
  ids = token_ids.reshape(-1)
  expert_index = hash_expert(ids, config.num_experts, config.options.seed)[:, None]  # [T, 1]
  weight = jnp.ones(expert_index.shape, jnp.float32)
  assigned = jnp.ones_like(expert_index, dtype=jnp.bool_)
  routing, counts = finish_assignments(config, expert_index, weight, assigned, ids.shape[0])
  probs = jax.nn.one_hot(expert_index[:, 0], config.num_experts)
  return RouterOutput(routing=routing, probs=probs, choice_counts=counts, logits=None)


def _check(config: RouterConfig) -> None:
  if config.top_k != 1:
    fail("router.top_k", config.top_k, "router.name='hash' routes each token to 1 expert")


FAMILY = RouterFamily(
    name="hash", options=HashOptions, reads=("routed_scaling_factor",), check=_check,
    uses_logits=False, needs_token_ids=True, inputs=("token_ids",),
    per_token_inputs=("token_ids",),
    prepare=lambda module, config, x, project, rng, token_ids: Prepared(
        inputs={"token_ids": token_ids}),
    route=lambda logits, config, inputs: hash_route(inputs["token_ids"], config),
    summary="a fixed hash of the token id picks the expert (no learned router)")
