"""Retrieval dispatch: move the experts to the tokens instead of the tokens to
the experts.

Each assignment (t, j) gathers its expert's weights next to token t and the
FFN runs per assignment:

    y[t] = sum_j weight[t, j] * FFN_{expert[t, j]}(x[t])

No sort, no groups, nothing of size E in the forward pass: the right move for
PEER's pool of up to millions of single-neuron experts (d_ff = 1), where each
token visits ~100 of them and an expert is rarely shared by tokens. Memory is
O(T * k * d_model * d_ff), so for large experts the token-moving strategies
win. The gradient of the gathers is a scatter-add into the [E, ...] weights.
Gives the same numbers as every other strategy on the same Routing.
"""

from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp

from moejax.dispatch.base import DispatchStrategy
from moejax.experts import hidden_activation, is_glu
from moejax.routing.types import AnyRouting, Routing


def retrieval_ffn(x: jax.Array, routing: Routing, params: Dict[str, jax.Array],
                  activation: str) -> jax.Array:
  """x: [T, d]; params: w_in [E, d, f], w_out [E, f, d], optional w_gate
  [E, d, f], b_in [E, f], b_gate [E, f], b_out [E, d] (ExpertBank.weights()). Returns [T, d]."""
  if not isinstance(routing, Routing):
    raise ValueError("dispatch='retrieval' needs a sparse Routing; this router gives dense "
                     "weights (Soft MoE): use dispatch='einsum'")
  index = routing.expert_index                                     # [T, k]
  weight = jnp.where(routing.valid, routing.weight, 0.0).astype(x.dtype)
  take = lambda name: jnp.take(params[name], index, axis=0).astype(x.dtype)
  h = jnp.einsum("td,tkdf->tkf", x, take("w_in"))
  if "b_in" in params:
    h = h + take("b_in")
  gate = jnp.einsum("td,tkdf->tkf", x, take("w_gate")) if is_glu(activation) else None
  if "b_gate" in params:
    gate = gate + take("b_gate")
  out = jnp.einsum("tkf,tkfd->tkd", hidden_activation(activation, h, gate), take("w_out"))
  if "b_out" in params:
    out = out + take("b_out")
  return jnp.einsum("tk,tkd->td", weight, out)


class RetrievalDispatch(DispatchStrategy):
  """dispatch='retrieval': the experts' weights move to the tokens
  (retrieval_ffn); called like every strategy, with the ExpertBank whose
  weights and activation it reads."""

  name = "retrieval"

  def dispatch(self, x, routing):
    raise NotImplementedError("retrieval dispatch moves weights, not tokens: call the strategy")

  def combine(self, y, routing, residual):
    raise NotImplementedError("retrieval dispatch moves weights, not tokens: call the strategy")

  def __call__(self, x: jax.Array, routing: AnyRouting, expert_fn) -> jax.Array:
    return retrieval_ffn(x, self.require_sparse(routing), expert_fn.weights(),
                         expert_fn.activation)
