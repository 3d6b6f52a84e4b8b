"""The data a router hands to dispatch.

Dispatch only ever sees a `Routing` (sparse assignments) or a `DenseRouting`
(dense dispatch/combine weights); it never knows which router made it.
`RouterOutput` adds what aux losses and metrics need (logits, probabilities,
choices before capacity dropping).
"""

from __future__ import annotations

from typing import Optional, Union

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Routing:
  """Sparse routing: token t's k-th assignment goes to slot
  `position[t, k]` of expert `expert_index[t, k]` with gate `weight[t, k]`.

  Attributes:
    expert_index: [tokens, k] int32, in [0, num_experts) wherever `valid`.
    weight: [tokens, k] float32 combine weight; exactly 0 where not `valid`.
    position: [tokens, k] int32 slot in the expert's buffer (order of arrival;
      < capacity wherever valid when capacity is set, < tokens otherwise).
    valid: [tokens, k] bool; False for dropped, null-expert and unused slots.
    num_experts: E (static).
    capacity: slots per expert, or None when nothing was dropped for capacity
      (dropless) (static).
  """

  expert_index: jax.Array
  weight: jax.Array
  position: jax.Array
  valid: jax.Array
  num_experts: int = struct.field(pytree_node=False)
  capacity: Optional[int] = struct.field(pytree_node=False)

  @property
  def num_tokens(self) -> int:
    return self.expert_index.shape[0]

  def buffer_size(self) -> int:
    """Slots per expert needed to hold every valid assignment."""
    return self.capacity if self.capacity is not None else self.num_tokens

  def to_dense(self) -> "DenseRouting":
    """One-hot [tokens, experts, slots] dispatch/combine tensors (reference)."""
    slots = self.buffer_size()
    onehot_e = jax.nn.one_hot(self.expert_index, self.num_experts, dtype=jnp.float32)
    onehot_e = onehot_e * self.valid[..., None]  # [T, K, E]
    onehot_c = jax.nn.one_hot(self.position, slots, dtype=jnp.float32)  # [T, K, C]
    # Contract k directly: never materialise [T, K, E, C] (K = E for expert choice).
    return DenseRouting(
        dispatch=jnp.einsum("tke,tkc->tec", onehot_e, onehot_c),
        combine=jnp.einsum("tke,tkc->tec", onehot_e * self.weight[..., None], onehot_c))

  def tokens_per_expert(self) -> jax.Array:
    """[num_experts] number of assignments each expert receives."""
    return jnp.zeros((self.num_experts,), jnp.float32).at[self.expert_index].add(self.valid)

  def weight_per_expert(self) -> jax.Array:
    """[num_experts] gate weight carried by each expert's assignments."""
    weight = jnp.where(self.valid, self.weight, 0.0).astype(jnp.float32)
    return jnp.zeros((self.num_experts,), jnp.float32).at[self.expert_index].add(weight)


@struct.dataclass
class DenseRouting:
  """Dense routing (Soft MoE, or a one-hot view of a sparse Routing).

  Attributes:
    dispatch: [tokens, experts, slots]; expert input slot (e, c) is
      sum_t dispatch[t, e, c] * x[t].
    combine: [tokens, experts, slots]; output for token t is
      sum_{e, c} combine[t, e, c] * expert_output[e, c].
  """

  dispatch: jax.Array
  combine: jax.Array

  @property
  def num_experts(self) -> int:
    return self.dispatch.shape[1]

  def to_dense(self) -> "DenseRouting":
    return self

  def tokens_per_expert(self) -> jax.Array:
    """[num_experts] total dispatch weight each expert receives."""
    return self.dispatch.sum(axis=(0, 2))

  def weight_per_expert(self) -> jax.Array:
    """[num_experts] total combine weight of each expert's outputs."""
    return self.combine.sum(axis=(0, 2))


AnyRouting = Union[Routing, DenseRouting]


@struct.dataclass
class RouterOutput:
  """A router's decision plus what losses and metrics are computed from.

  Attributes:
    routing: what dispatch consumes.
    probs: [tokens, outputs] float32 router probabilities that sum to 1 per
      token (outputs = experts + null experts; experts for Soft MoE, where
      it is each token's combine mass per expert), or None where no router
      scores every expert (product-key retrieval).
    choice_counts: [outputs] float32 tokens choosing each output *before*
      capacity dropping (null experts included).
    logits: [tokens, router outputs] float32 raw router logits, or None for
      routers without a learned projection (hash).
    zero_computation_weight: [tokens, copy + constant experts] gate weight
      of each token's MoE++ copy and constant experts (which the Routing
      leaves out), or None (moejax.routing.zero_computation).
    family_loss: [] a loss the router family adds to training, already
      weighted by the family's own coefficient (ReMoE's adaptive L1
      penalty), or None. The trainer adds it with weight 1 as aux loss
      'family'.
  """

  routing: AnyRouting
  probs: Optional[jax.Array]
  choice_counts: jax.Array
  logits: Optional[jax.Array]
  zero_computation_weight: Optional[jax.Array] = None
  family_loss: Optional[jax.Array] = None


def at_least_f32(x: jax.Array) -> jax.Array:
  """Router math runs in float32, or float64 when given float64 (x64 tests)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))
