"""Small builders shared by the dispatch and layer tests."""

import functools

import jax
import jax.numpy as jnp

from moejax import RouterConfig
from moejax.dispatch import get_strategy
from moejax.experts import expert_ffn
from moejax.grouped_matmul import RowLayout
from moejax.routing import route
from moejax.routing.threshold import ThresholdOptions

# One config per router family (plus the interesting token-choice variants).
ROUTER_CASES = {
    "top_k_capacity": RouterConfig(num_experts=4, top_k=2, capacity_factor=1.0),
    "top_k_dropless": RouterConfig(num_experts=4, top_k=2, normalize_top_k=True),
    "top_k_bpr": RouterConfig(num_experts=4, top_k=2, capacity_factor=0.75,
                              drop_policy="probability"),
    "deepseek": RouterConfig(num_experts=8, top_k=3, score_fn="sigmoid", normalize_top_k=True,
                             num_expert_groups=4, top_k_groups=2, routed_scaling_factor=2.0),
    "null_experts": RouterConfig(num_experts=4, top_k=2, num_null_experts=2),
    "threshold": RouterConfig(name="threshold", num_experts=4, top_k=3,
                              options=ThresholdOptions(probability=0.5)),
    "expert_choice": RouterConfig(name="expert_choice", num_experts=4, capacity_factor=1.5),
    "sinkhorn": RouterConfig(name="sinkhorn", num_experts=4, top_k=1, capacity_factor=1.5),
    "hash": RouterConfig(name="hash", num_experts=4, top_k=1),
}


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5, 6))
def make_params(key, d, f, e, outputs, glu=True, dtype=jnp.float32):
  """Random expert and router weights, as one compiled program (built eagerly,
  XLA would compile each random draw and scale on its own)."""
  ks = jax.random.split(key, 6)
  n = lambda k, s, fan: (jax.random.normal(k, s) / jnp.sqrt(fan)).astype(dtype)
  experts = {"w_in": n(ks[0], (e, d, f), d), "w_out": n(ks[1], (e, f, d), f),
             "b_in": n(ks[3], (e, f), 1.0) * 0.1, "b_out": n(ks[4], (e, d), 1.0) * 0.1}
  if glu:
    experts["w_gate"] = n(ks[2], (e, d, f), d)
    experts["b_gate"] = n(ks[5], (e, f), 1.0) * 0.1
  router = n(jax.random.fold_in(key, 9), (d, outputs), 1.0)
  return {"router": router, "experts": experts}


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7, 8))
def moe_forward(params, x, token_ids, router_cfg, dispatch, backend="ragged_dot",
                activation="swiglu", block_size=4, align=1):
  """Pure MoE forward: route, then dispatch with the named strategy. x: [T, d].

  block_size: rows per block of the 'blocked' backend (small, so that test
  batches span several blocks); align: dropless dispatch's group alignment.
  """
  logits = x @ params["router"] + params.get("router_bias", 0.0)
  out = route(router_cfg, logits, token_ids=token_ids)
  expert_fn = lambda b: expert_ffn(params["experts"], b, activation, backend, block_size)
  return get_strategy(dispatch, RowLayout(align))(x, out.routing, expert_fn)


def compiled(fn):
  """fn(config, *arrays, **inputs) as one compiled program per config: the
  config and non-array inputs are static, arrays (and None) traced. Called
  eagerly, a router compiles each of its ops on its own."""
  @functools.partial(jax.jit, static_argnums=(0, 3))
  def run(config, args, arrays, static):
    return fn(config, *args, **arrays, **dict(static))

  def call(config, *args, **inputs):
    arrays = {k: v for k, v in inputs.items() if v is None or hasattr(v, "shape")}
    static = tuple(sorted((k, v) for k, v in inputs.items() if k not in arrays))
    return run(config, args, arrays, static)
  return call
