"""SwitchHead (Csordás et al. 2023, "SwitchHead: Accelerating Transformers
with Mixture-of-Experts Attention"): each attention head's value and output
projections are mixtures of linear experts.

For head h, with sigmoid gates and top-k selection (no renormalisation):

    value of source token s:      v[s, h] = sum_{e in top-k(g_v)} g_v[e] x_s W_V[h, e]
                                  g_v = sigmoid(x_s R_V[h])
    output of destination t:      y[t] = sum_h sum_{e in top-k(g_o)} g_o[e] o[t, h] W_O[h, e]
                                  g_o = sigmoid(x_t R_O[h]),  o = attention output

Queries and keys stay dense. A token's value depends on that token alone
and its output mix on itself, so the layer stays causal and the key/value
cache works as before (it caches the mixed values).

`RoutedProjection` is the shared piece: (row, head) pairs are routed among
that head's experts by moejax's top-k router, moved by dropless dispatch and
computed by the grouped matmul front door, as the MoE FFN's tokens are.
Left out: SwitchHead's optional expert-mixed keys / queries (the paper finds
values and outputs suffice) and any load-balancing loss (the paper uses
none).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from moejax.config import RouterConfig
from moejax.dispatch import get_strategy
from moejax.grouped_matmul import gmm, row_layout
from moejax.routing import route
from moejax.routing.capacity import assign_positions
from moejax.routing.types import Routing, at_least_f32


class RoutedProjection(nn.Module):
  """Per-head mixture of `experts` linear maps [d_in -> d_out].

  Call: (router_input [S, d_router], inputs [S, heads, d_in]) -> [S, heads,
  d_out]; row s of head h takes the top_k of head h's experts by
  sigmoid(router_input[s] R[h]) and sums their maps weighted by those gates.

  Params: router [heads, d_router, experts], kernel [heads, experts, d_in, d_out].
  """

  heads: int
  experts: int
  top_k: int
  d_out: int
  gmm_backend: str = "auto"
  gmm_block_size: int = 128
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, router_input: jax.Array, inputs: jax.Array) -> jax.Array:
    rows, heads, d_in = inputs.shape
    router = self.param("router", nn.initializers.variance_scaling(1.0, "fan_in", "normal",
                                                                   in_axis=-2, out_axis=-1),
                        (heads, router_input.shape[-1], self.experts))
    kernel = self.param("kernel", nn.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal", in_axis=-2, out_axis=-1, batch_axis=(0, 1)),
        (heads, self.experts, d_in, self.d_out))
    logits = jnp.einsum("sd,hde->she", at_least_f32(router_input), router)
    config = RouterConfig(num_experts=self.experts, top_k=self.top_k, score_fn="sigmoid")
    head_routing = route(config, logits.reshape(rows * heads, self.experts)).routing
    # Head h owns experts [h * E, (h + 1) * E) of one bank of heads * E maps.
    head = jnp.repeat(jnp.arange(heads, dtype=jnp.int32), self.top_k)[None, :]
    expert_index = (head_routing.expert_index.reshape(rows, heads * self.top_k)
                    + head * self.experts).reshape(rows * heads, self.top_k)
    position, valid = assign_positions(expert_index, head_routing.valid, heads * self.experts,
                                       None)
    routing = Routing(expert_index=expert_index, weight=head_routing.weight, position=position,
                      valid=valid, num_experts=heads * self.experts, capacity=None)
    bank = kernel.reshape(heads * self.experts, d_in, self.d_out).astype(self.dtype)
    layout = row_layout(self.gmm_backend, self.gmm_block_size)
    linear = lambda batch: batch.replace_x(gmm(batch.x, bank, batch.group_sizes,
                                               self.gmm_backend, self.gmm_block_size))
    out = get_strategy("dropless", layout)(inputs.reshape(rows * heads, d_in).astype(self.dtype),
                                           routing, linear)
    return out.reshape(rows, heads, self.d_out)
