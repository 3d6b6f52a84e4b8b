"""The gather-fused expert FFN (gmm_backend='gathered'): token rows read by
index and weighted outputs added back by index inside the expert loop equal
the grouped copy + einsum experts + combine, values and every gradient, on
straddling blocks, empty experts, padding rows, GLU and biases; and the
layer builds no grouped [rows, d] copy of the tokens."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import jaxprs_in_params

from moejax import MoEConfig, MoELayer, RouterConfig
from moejax.expert_batch import ExpertBatch
from moejax.experts import expert_ffn, hidden_activation
from moejax.grouped_matmul.gathered_ffn import gathered_ffn
from tests.helpers import make_params

T, D, F = 11, 8, 12


def _reference(act_name, x, row_token, row_weight, params, group_sizes):
  """Grouped copy of the token rows, einsum experts, weighted sum per token."""
  rows = jnp.take(x, row_token, axis=0, mode="fill", fill_value=0)
  y = expert_ffn(params, ExpertBatch(x=rows, group_sizes=group_sizes), act_name, "einsum").x
  y = y * row_weight[:, None]
  return jax.ops.segment_sum(y, row_token, num_segments=x.shape[0] + 1)[:x.shape[0]]


def _fused(act_name, block, x, row_token, row_weight, params, group_sizes):
  p = lambda name: params.get(name)
  return gathered_ffn(functools.partial(hidden_activation, act_name), block, x, row_token,
                      row_weight, p("w_in"), p("w_gate"), p("w_out"), p("b_in"), p("b_gate"),
                      p("b_out"), group_sizes)


@pytest.mark.parametrize("act_name,glu", [("swiglu", True), ("gelu", False)])
@pytest.mark.parametrize("group_sizes,block", [
    ((5, 0, 7, 3), 4),      # groups straddle 4-row blocks, expert 1 empty
    ((4, 8, 0, 4), 4),      # block-aligned groups, as dropless pads them
    ((2, 3, 1, 6), 16),     # one block holds every group
])
def test_gathered_ffn_equals_grouped_copy_values_and_gradients(act_name, glu, group_sizes,
                                                               block):
  params = make_params(jax.random.key(0), D, F, 4, 4, glu=glu)["experts"]
  sizes = jnp.array(group_sizes, jnp.int32)
  rows = int(sizes.sum()) + 3                                # + 3 padding rows
  x = jax.random.normal(jax.random.key(1), (T, D))
  # Tokens repeat across rows (a token visits several experts); padding -> T.
  row_token = jnp.concatenate([jax.random.randint(jax.random.key(2), (rows - 3,), 0, T),
                               jnp.full((3,), T)]).astype(jnp.int32)
  row_weight = jax.random.uniform(jax.random.key(3), (rows,), minval=0.1, maxval=1.0)
  args = (x, row_weight, params)
  probe = jax.random.normal(jax.random.key(4), (T, D))
  loss = lambda f: lambda x, w, p: jnp.sum(f(act_name, *(() if f is _reference else (block,)),
                                              x, row_token, w, p, sizes) * probe)
  fused = jax.jit(_fused, static_argnums=(0, 1))
  reference = jax.jit(_reference, static_argnums=0)
  np.testing.assert_allclose(fused(act_name, block, x, row_token, row_weight, params, sizes),
                             reference(act_name, x, row_token, row_weight, params, sizes),
                             rtol=1e-5, atol=1e-5)
  got = jax.jit(jax.grad(loss(_fused), argnums=(0, 1, 2)))(*args)
  want = jax.jit(jax.grad(loss(_reference), argnums=(0, 1, 2)))(*args)
  for g, w, name in zip(jax.tree.leaves(got), jax.tree.leaves(want),
                        ["x", "row_weight"] + sorted(params)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


CASES = {
    "top2": RouterConfig(num_experts=4, top_k=2, normalize_top_k=True),
    "deepseek": RouterConfig(num_experts=8, top_k=3, score_fn="sigmoid", normalize_top_k=True,
                             num_expert_groups=4, top_k_groups=2, routed_scaling_factor=2.0),
    "null_experts": RouterConfig(num_experts=4, top_k=2, num_null_experts=2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_with_gathered_experts_equals_the_einsum_reference(case):
  """MoELayer(dropless, 'gathered') against MoELayer(einsum dispatch) on the
  same parameters: outputs and the gradients of every parameter and x."""
  base = MoEConfig(router=dataclasses.replace(CASES[case], capacity_factor=None), d_model=D,
                   d_ff=F, activation="swiglu", use_bias=True, dispatch="dropless",
                   gmm_backend="gathered", gmm_block_size=4)
  fused = MoELayer(base)
  ref = MoELayer(dataclasses.replace(base, dispatch="einsum", gmm_backend="einsum"))
  x = jax.random.normal(jax.random.key(5), (2, 9, D))
  variables = jax.jit(fused.init)(jax.random.key(6), x)
  probe = jax.random.normal(jax.random.key(7), x.shape)
  loss = lambda layer: lambda p, x: jnp.sum(layer.apply({**variables, "params": p}, x)[0] * probe)
  np.testing.assert_allclose(jax.jit(fused.apply)(variables, x)[0],
                             jax.jit(ref.apply)(variables, x)[0], rtol=1e-5, atol=1e-5)
  got = jax.jit(jax.grad(loss(fused), argnums=(0, 1)))(variables["params"], x)
  want = jax.jit(jax.grad(loss(ref), argnums=(0, 1)))(variables["params"], x)
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))


def test_gathered_layer_builds_no_grouped_copy_of_the_tokens():
  """No [P, d] array (P grouped rows) exists in the gathered layer's forward
  or backward; the blocked layer has one."""
  cfg = MoEConfig(router=RouterConfig(num_experts=4, top_k=2, capacity_factor=None), d_model=D,
                  d_ff=F, activation="gelu", dispatch="dropless", gmm_block_size=4)
  x = jax.random.normal(jax.random.key(8), (16, D))
  rows = 16 * 2 + 4 * 4            # round_up(T·k, b) + E·b: dropless's grouped rows

  def shapes(backend):
    layer = MoELayer(dataclasses.replace(cfg, gmm_backend=backend))
    variables = jax.jit(layer.init)(jax.random.key(0), x)
    grad = jax.grad(lambda p, x: jnp.sum(layer.apply({**variables, "params": p}, x)[0] ** 2),
                    argnums=(0, 1))
    found = set()

    def walk(jaxpr):
      for eqn in jaxpr.eqns:
        found.update(tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
        for sub in jaxprs_in_params(eqn.params):
          walk(sub)
    walk(jax.make_jaxpr(grad)(variables["params"], x).jaxpr)
    return found

  assert (rows, D) in shapes("blocked")
  assert (rows, D) not in shapes("gathered")
