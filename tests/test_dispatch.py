"""Every dispatch strategy / grouped-matmul backend equals the einsum reference
on the same Routing (forward and gradients), and equals a per-token loop."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax import RouterConfig
from moejax.dispatch import get_strategy
from moejax.experts import expert_ffn
from moejax.grouped_matmul import gmm
from moejax.routing import route
from tests.helpers import ROUTER_CASES, make_params, moe_forward

FAST = [("gather", "ragged_dot"), ("dropless", "ragged_dot"), ("dropless", "einsum")]
D, F = 8, 12


def _setup(router_cfg, tokens=13, seed=0):
  params = make_params(jax.random.key(seed), D, F, router_cfg.num_experts,
                       router_cfg.num_router_outputs)
  x = jax.random.normal(jax.random.key(seed + 1), (tokens, D))
  ids = jnp.arange(tokens) * 7 + 3
  return params, x, ids


def _loss(params, x, ids, cfg, dispatch, backend):
  y = moe_forward(params, x, ids, cfg, dispatch, backend)
  return jnp.sum(y * jnp.cos(jnp.arange(y.size).reshape(y.shape)))


@pytest.mark.parametrize("case", sorted(ROUTER_CASES))
@pytest.mark.parametrize("dispatch,backend", FAST)
def test_strategy_equals_einsum_reference(case, dispatch, backend):
  cfg = ROUTER_CASES[case]
  params, x, ids = _setup(cfg)
  ref = moe_forward(params, x, ids, cfg, "einsum")
  got = moe_forward(params, x, ids, cfg, dispatch, backend)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  grad = jax.jit(jax.grad(_loss, argnums=(0, 1)), static_argnums=(3, 4, 5))
  g_ref = grad(params, x, ids, cfg, "einsum", "ragged_dot")
  g_got = grad(params, x, ids, cfg, dispatch, backend)
  for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dispatch,backend", FAST + [("einsum", "ragged_dot")])
@pytest.mark.parametrize("situation", ["empty_experts", "one_expert_takes_all"])
def test_degenerate_loads(dispatch, backend, situation):
  cfg = RouterConfig(num_experts=4, top_k=1, capacity_factor=4.0)  # capacity = T: no drops
  params, x, ids = _setup(cfg, tokens=11)
  bias = [0.0, 50.0, 0.0, 0.0] if situation == "one_expert_takes_all" else [0.0, 0.0, -50, -50]
  params["router_bias"] = jnp.array(bias)
  logits = x @ params["router"] + params["router_bias"]
  load = route(cfg, logits).routing.tokens_per_expert()
  if situation == "one_expert_takes_all":
    assert float(load[1]) == 11
  else:
    assert float(load[2] + load[3]) == 0
  ref = moe_forward(params, x, ids, cfg, "einsum")
  np.testing.assert_allclose(moe_forward(params, x, ids, cfg, dispatch, backend), ref,
                             rtol=1e-5, atol=1e-5)
  # Equal to the explicit per-token loop too (nothing dropped).
  np.testing.assert_allclose(ref, _per_token_loop(params, x, cfg), rtol=1e-5, atol=1e-5)


def _ffn_numpy(p, e, v):
  silu = lambda z: z / (1 + np.exp(-z))
  h = v @ p["w_in"][e] + p["b_in"][e]
  g = v @ p["w_gate"][e]
  return (silu(g) * h) @ p["w_out"][e] + p["b_out"][e]


def _per_token_loop(params, x, cfg):
  out = route(cfg, x @ params["router"] + params.get("router_bias", 0.0))
  p = jax.tree.map(np.asarray, params["experts"])
  idx, w, valid = map(np.asarray, (out.routing.expert_index, out.routing.weight,
                                   out.routing.valid))
  xs = np.asarray(x)
  y = np.zeros_like(xs)
  for t in range(xs.shape[0]):
    for k in range(idx.shape[1]):
      if valid[t, k]:
        y[t] += w[t, k] * _ffn_numpy(p, idx[t, k], xs[t])
  return y


@pytest.mark.parametrize("dispatch", ["einsum", "gather", "dropless"])
def test_token_choice_equals_per_token_loop_when_nothing_drops(dispatch):
  cfg = RouterConfig(num_experts=4, top_k=2, capacity_factor=2.0)  # C = T: nothing drops
  params, x, ids = _setup(cfg, tokens=9, seed=4)
  out = route(cfg, x @ params["router"])
  assert bool(out.routing.valid.all())
  y = moe_forward(params, x, ids, cfg, dispatch)
  np.testing.assert_allclose(y, _per_token_loop(params, x, cfg), rtol=1e-5, atol=1e-5)


def test_dropped_tokens_get_zero_output():
  cfg = RouterConfig(num_experts=4, top_k=1, capacity_factor=0.25)  # C = 1
  params, x, ids = _setup(cfg, tokens=12)
  out = route(cfg, x @ params["router"])
  dropped = ~np.asarray(out.routing.valid[:, 0])
  assert dropped.sum() >= 8
  y = np.asarray(moe_forward(params, x, ids, cfg, "gather"))
  np.testing.assert_array_equal(y[dropped], 0.0)


def test_soft_moe_dense_dispatch_through_einsum():
  cfg = RouterConfig(name="soft_moe", num_experts=3, top_k=1, num_slots=2)
  params, x, ids = _setup(cfg, tokens=5)
  out = route(cfg, x @ params["router"])
  y = get_strategy("einsum")(x, out.routing,
                             lambda b: expert_ffn(params["experts"], b, "swiglu"))
  # Explicit: slots = D^T x, expert e on its slots, y = C * outputs.
  disp, comb = np.asarray(out.routing.dispatch), np.asarray(out.routing.combine)
  p = jax.tree.map(np.asarray, params["experts"])
  slots = np.einsum("tes,td->esd", disp, np.asarray(x))
  outs = np.stack([_ffn_numpy(p, e, slots[e]) for e in range(3)])
  np.testing.assert_allclose(y, np.einsum("tes,esd->td", comb, outs), rtol=1e-5, atol=1e-5)
  for name in ("gather", "dropless"):
    with pytest.raises(ValueError, match="sparse Routing"):
      get_strategy(name)(x, out.routing, lambda b: b)


@pytest.mark.parametrize("sizes", [[3, 0, 5, 2], [0, 0, 10, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
def test_gmm_backends_agree_with_loop(sizes):
  lhs = jax.random.normal(jax.random.key(0), (12, 5))  # 12 rows: some are padding
  rhs = jax.random.normal(jax.random.key(1), (4, 5, 3))
  gs = jnp.array(sizes, jnp.int32)
  want = np.zeros((12, 3), np.float32)
  start = 0
  for g, n in enumerate(sizes):
    want[start:start + n] = np.asarray(lhs[start:start + n]) @ np.asarray(rhs[g])
    start += n
  for backend in ("ragged_dot", "einsum"):
    np.testing.assert_allclose(gmm(lhs, rhs, gs, backend), want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="backend='nope'"):
    gmm(lhs, rhs, gs, "nope")


def test_gmm_ragged_dot_differentiates_under_vmap_both_ways():
  lhs = jax.random.normal(jax.random.key(0), (3, 9, 4))
  rhs = jax.random.normal(jax.random.key(1), (2, 4, 5))
  gs = jnp.array([[2, 3], [0, 9], [4, 0]], jnp.int32)
  loss = lambda l, r, g, backend: jnp.sum(jnp.sin(gmm(l, r, g, backend)))
  for backend in ("ragged_dot", "einsum"):
    per_group = jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(0, None, 0, None))(
        lhs, rhs, gs, backend)
    batched = jax.grad(lambda l, r: jnp.sum(jax.vmap(loss, in_axes=(0, None, 0, None))(
        l, r, gs, backend)), argnums=(0, 1))(lhs, rhs)
    if backend == "ragged_dot":
      ragged = (per_group, batched)
    else:
      reference = (per_group, batched)
  for got, want in zip(jax.tree.leaves(ragged), jax.tree.leaves(reference)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
