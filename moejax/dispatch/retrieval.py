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
A small pool (at most DENSE_MAX_EXPERTS_PER_CHOICE experts per choice) is
cheaper to score whole: one [T, d] x [d, E f] matmul, the chosen units kept,
so that method does build [T, E f] values (see retrieval_ffn's `method`).
Both give the same numbers as every other strategy on the same Routing.
"""

from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp

from moejax.dispatch.base import DispatchStrategy
from moejax.experts import hidden_activation, is_glu
from moejax.routing.types import AnyRouting, Routing


# Above this many experts per assignment column (E / k), retrieval gathers the
# chosen experts' weights; at or below it, it scores every expert with one
# matmul and keeps the chosen ones. On a 2-core CPU (2048 tokens, d_model 128,
# k 128, single-neuron experts, forward + backward) scoring every expert was
# 2.7x faster at E = 2304 (E / k = 18), 1.6x at 4608 and 0.8x at 9216; the
# gathers and the backward's scatter-add of [T, k, d, f] weights are what it
# avoids. 32 keeps it on the side of the crossover measured on CPU, where
# matmuls are at their slowest relative to gathers.
DENSE_MAX_EXPERTS_PER_CHOICE = 32
METHODS = ("auto", "gather", "dense")


def retrieval_ffn(x: jax.Array, routing: Routing, params: Dict[str, jax.Array],
                  activation: str, method: str = "auto") -> jax.Array:
  """x: [T, d]; params: w_in [E, d, f], w_out [E, f, d], optional w_gate
  [E, d, f], b_in [E, f], b_gate [E, f], b_out [E, d] (ExpertBank.weights()).
  method: 'gather' (move the chosen experts' weights to each token), 'dense'
  (every expert's hidden units for every token, then the chosen ones: O(T E
  d f), never [T, k, d, f]) or 'auto' ('dense' when E <= k *
  DENSE_MAX_EXPERTS_PER_CHOICE). Both give the same numbers. Returns [T, d]."""
  if not isinstance(routing, Routing):
    raise ValueError("dispatch='retrieval' needs a sparse Routing; this router gives dense "
                     "weights (Soft MoE): use dispatch='einsum'")
  if method not in METHODS:
    raise ValueError(f"retrieval method={method!r} is invalid: use one of {METHODS}")
  index = routing.expert_index                                     # [T, k]
  weight = jnp.where(routing.valid, routing.weight, 0.0).astype(x.dtype)
  if method == "auto":
    dense = params["w_in"].shape[0] <= index.shape[1] * DENSE_MAX_EXPERTS_PER_CHOICE
    method = "dense" if dense else "gather"
  ffn = _dense_ffn if method == "dense" else _gathered_ffn
  return ffn(x, index, weight, params, activation)


def _gathered_ffn(x, index, weight, params, activation):
  """The chosen experts' weights gathered next to each token: [T, k, d, f]."""
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


def _dense_ffn(x, index, weight, params, activation):
  """Every expert's pre-activations [T, E, f] by one matmul, the chosen k
  kept; their weighted activations are added into a [T, E, f] matrix (an
  expert chosen twice by one token, by two heads, counts twice) that one
  matmul with w_out [E, f, d] turns into the output."""
  num_tokens, k = index.shape
  rows = jnp.arange(num_tokens)[:, None]                            # [T, 1]

  def chosen(name, bias):                                           # [T, k, f]
    every = jnp.einsum("td,edf->tef", x, params[name].astype(x.dtype))
    h = jnp.take_along_axis(every, index[:, :, None], axis=1)
    if bias in params:
      h = h + jnp.take(params[bias], index, axis=0).astype(x.dtype)
    return h

  gate = chosen("w_gate", "b_gate") if is_glu(activation) else None
  act = hidden_activation(activation, chosen("w_in", "b_in"), gate) * weight[:, :, None]
  num_experts, f = params["w_in"].shape[0], params["w_in"].shape[2]
  spread = jnp.zeros((num_tokens, num_experts, f), x.dtype).at[rows, index].add(act)
  out = jnp.einsum("tef,efd->td", spread, params["w_out"].astype(x.dtype))
  if "b_out" in params:
    per_expert = jnp.zeros((num_tokens, num_experts), x.dtype).at[rows, index].add(weight)
    out = out + per_expert @ params["b_out"].astype(x.dtype)
  return out


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
