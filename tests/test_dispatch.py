"""Every dispatch strategy / grouped-matmul backend equals the einsum reference
on the same Routing (forward and gradients), and equals a per-token loop."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax import MoEConfig, RouterConfig
from moejax.dispatch import get_strategy
from moejax.experts import expert_ffn
from moejax.dispatch.dropless import grouped_slots
from moejax.dispatch.permute import combine_rows, gather_rows, inverse_slots
from moejax.grouped_matmul import gmm, group_ids, resolve_backend
from moejax.routing import route
from moejax.routing.soft_moe import SoftMoEOptions
from tests.helpers import ROUTER_CASES, make_params, moe_forward

# (dispatch, gmm backend, dropless alignment). Blocked runs with 4-row blocks:
# align=1 makes groups straddle blocks, align=4 pads each group to whole blocks.
FAST = [("gather", "ragged_dot", 1), ("gather", "blocked", 1), ("dropless", "ragged_dot", 1),
        ("dropless", "einsum", 1), ("dropless", "blocked", 1), ("dropless", "blocked", 4),
        ("dropless", "tokamax", 1)]
D, F = 8, 12


def _setup(router_cfg, tokens=13, seed=0):
  params = make_params(jax.random.key(seed), D, F, router_cfg.num_experts,
                       router_cfg.num_router_outputs)
  x = jax.random.normal(jax.random.key(seed + 1), (tokens, D))
  ids = jnp.arange(tokens) * 7 + 3
  return params, x, ids


def _loss(params, x, ids, cfg, dispatch, backend, align=1):
  y = moe_forward(params, x, ids, cfg, dispatch, backend, align=align)
  return jnp.sum(y * jnp.cos(jnp.arange(y.size).reshape(y.shape)))


@pytest.mark.parametrize("case", sorted(ROUTER_CASES))
@pytest.mark.parametrize("dispatch,backend,align", FAST)
def test_strategy_equals_einsum_reference(case, dispatch, backend, align):
  cfg = ROUTER_CASES[case]
  params, x, ids = _setup(cfg)
  ref = moe_forward(params, x, ids, cfg, "einsum")
  got = moe_forward(params, x, ids, cfg, dispatch, backend, align=align)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  grad = jax.jit(jax.grad(_loss, argnums=(0, 1)), static_argnums=(3, 4, 5, 6))
  g_ref = grad(params, x, ids, cfg, "einsum", "einsum")
  g_got = grad(params, x, ids, cfg, dispatch, backend, align)
  for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dispatch,backend,align", FAST + [("einsum", "ragged_dot", 1)])
@pytest.mark.parametrize("situation", ["empty_experts", "one_expert_takes_all"])
def test_degenerate_loads(dispatch, backend, align, situation):
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
  np.testing.assert_allclose(moe_forward(params, x, ids, cfg, dispatch, backend, align=align),
                             ref, rtol=1e-5, atol=1e-5)
  # Equal to the explicit per-token loop too (nothing dropped).
  np.testing.assert_allclose(ref, _per_token_loop(params, x, cfg), rtol=1e-5, atol=1e-5)


def _ffn_numpy(p, e, v):
  silu = lambda z: z / (1 + np.exp(-z))
  h = v @ p["w_in"][e] + p["b_in"][e]
  g = v @ p["w_gate"][e] + p["b_gate"][e]
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
  cfg = RouterConfig(name="soft_moe", num_experts=3, top_k=1, options=SoftMoEOptions(num_slots=2))
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


def _gmm_loop(lhs, rhs, sizes):
  want = np.zeros((lhs.shape[0], rhs.shape[2]), np.float64)
  start = 0
  for g, n in enumerate(sizes):
    want[start:start + n] = np.asarray(lhs[start:start + n], np.float64) @ np.asarray(rhs[g])
    start += n
  return want


# Empty groups, one group holding every row, rows that are padding, and group
# boundaries inside blocks (sizes not multiples of the block).
GMM_SIZES = [[3, 0, 5, 2], [0, 0, 10, 0], [1, 1, 1, 1], [0, 0, 0, 0], [12, 0, 0, 0],
             [4, 0, 8, 0], [9, 1, 0, 2]]


def _gmm_loss(lhs, rhs, group_sizes, backend, block):
  cos = jnp.cos(jnp.arange(36.0)).reshape(12, 3)
  return jnp.sum(jnp.sin(gmm(lhs, rhs, group_sizes, backend, block)) * cos)


# The group sizes are an argument, so every size case reuses one compiled program.
_gmm_jit = jax.jit(gmm, static_argnums=(3, 4))
_gmm_loss_grad = jax.jit(jax.grad(_gmm_loss, argnums=(0, 1)), static_argnums=(3, 4))


@pytest.mark.parametrize("sizes", GMM_SIZES)
def test_gmm_backends_agree_with_loop(sizes):
  lhs = jax.random.normal(jax.random.key(0), (12, 5))  # 12 rows: some are padding
  rhs = jax.random.normal(jax.random.key(1), (4, 5, 3))
  gs = jnp.array(sizes, jnp.int32)
  want = _gmm_loop(lhs, rhs, sizes)
  g_ref = _gmm_loss_grad(lhs, rhs, gs, "einsum", 1)
  for backend, block in [("ragged_dot", 1), ("tokamax", 1), ("einsum", 1), ("auto", 4)] + [
      ("blocked", b) for b in (1, 2, 5, 8, 128)]:
    np.testing.assert_allclose(_gmm_jit(lhs, rhs, gs, backend, block), want, rtol=1e-5,
                               atol=1e-5)
    g_got = _gmm_loss_grad(lhs, rhs, gs, backend, block)
    for got, ref in zip(g_got, g_ref):
      np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="backend='nope'"):
    gmm(lhs, rhs, gs, "nope")


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 3e-2)])
def test_blocked_gmm_at_scale_with_dtypes(dtype, tol):
  """300 rows over 5 groups in 32-row blocks (ragged sizes): the blocked
  backend equals ragged_dot, forward and gradients, within the dtype's
  tolerance (bf16 is compared relative to the output scale)."""
  sizes = [70, 0, 131, 1, 90]  # sum 292: 8 rows of padding
  lhs = jax.random.normal(jax.random.key(2), (300, 16)).astype(dtype)
  rhs = (jax.random.normal(jax.random.key(3), (5, 16, 24)) / 4).astype(dtype)
  gs = jnp.array(sizes, jnp.int32)
  loss = lambda l, r, backend: jnp.sum(gmm(l, r, gs, backend, 32).astype(jnp.float32) ** 2)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
  want = _gmm_loop(lhs.astype(jnp.float32), rhs.astype(jnp.float32), sizes)
  blocked = jax.jit(lambda l, r: gmm(l, r, gs, "blocked", 32))(lhs, rhs)
  got = np.asarray(blocked.astype(jnp.float32))
  assert got.dtype == np.float32 and blocked.dtype == jnp.dtype(dtype)
  np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
  for got, ref in zip(grads(lhs, rhs, "blocked"), grads(lhs, rhs, "ragged_dot")):
    got, ref = np.asarray(got, np.float32), np.asarray(ref, np.float32)
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())


def test_auto_backend_per_platform(monkeypatch):
  import moejax.grouped_matmul as grouped_matmul
  assert resolve_backend("auto", "cpu") == "gathered"
  assert resolve_backend("auto", "gpu") == "tokamax"   # [test] installs tokamax
  assert resolve_backend("auto", "tpu") == "tokamax"
  assert resolve_backend("einsum", "cpu") == "einsum"
  monkeypatch.setattr(grouped_matmul, "tokamax_available", lambda: False)
  assert resolve_backend("auto", "gpu") == "ragged_dot"
  with pytest.raises(ValueError, match="gmm_backend='tokamax' is invalid: needs the tokamax"):
    MoEConfig(d_model=8, gmm_backend="tokamax")


@pytest.mark.parametrize("block", [1, 4])
def test_dropless_layout_conserves_assignments(block):
  """Every valid assignment has its own row inside its expert's group, groups
  are whole blocks, and invalid assignments have none."""
  cfg = RouterConfig(num_experts=5, top_k=2, num_null_experts=2)  # null picks are invalid
  params, x, _ = _setup(cfg, tokens=23)
  routing = route(cfg, x @ params["router"]).routing
  slot, group_sizes, num_rows = grouped_slots(routing, block)
  slot, group_sizes = np.asarray(slot), np.asarray(group_sizes)
  valid = np.asarray(routing.valid).reshape(-1)
  experts = np.asarray(routing.expert_index).reshape(-1)
  assert 0 < valid.sum() < valid.size
  assert np.all(slot[~valid] == num_rows)
  assert len(set(slot[valid])) == valid.sum() and slot[valid].max() < num_rows
  assert np.all(group_sizes % block == 0) and group_sizes.sum() <= num_rows
  starts = np.cumsum(group_sizes) - group_sizes
  for e in range(cfg.num_experts):
    mine = slot[valid & (experts == e)]
    assert np.all((mine >= starts[e]) & (mine < starts[e] + group_sizes[e]))
    assert group_sizes[e] - len(mine) < block  # padding is less than a block


def test_gather_rows_gradient_equals_plain_gather():
  x = jax.random.normal(jax.random.key(0), (6, 3))
  idx = jnp.array([2, 0, 6, 2, 5, 1, 6, 3], jnp.int32)  # 6 = out of range -> zero row
  readers = np.full((6, 2), 8, np.int32)  # inverse map, 8 = no reader
  for out_row, src in enumerate(np.asarray(idx)):
    if src < 6:
      readers[src, list(readers[src]).index(8)] = out_row
  weights = jnp.cos(jnp.arange(24.0)).reshape(8, 3)
  plain = lambda x: jnp.sum(jnp.take(x, idx, axis=0, mode="fill", fill_value=0) * weights)
  ours = lambda x: jnp.sum(gather_rows(x, idx, jnp.asarray(readers)) * weights)
  np.testing.assert_array_equal(jax.jit(ours)(x), jax.jit(plain)(x))
  np.testing.assert_allclose(jax.jit(jax.grad(ours))(x), jax.jit(jax.grad(plain))(x), rtol=1e-6)


@pytest.mark.parametrize("wide", [False, True])
def test_combine_rows_equals_plain_gather_and_sum_with_gradients(wide):
  """The combine's row-order backward against autodiff of the naive
  gather + weighted sum: invalid assignments (slot past the rows) and padding
  rows (no assignment) included; `wide` repeats the assignments past the
  unrolled-loop limit (expert choice's K = E)."""
  tokens, k, rows = 5, 3, 20
  slot = jnp.array([[0, 7, 20], [3, 11, 2], [20, 20, 5], [9, 1, 19], [4, 13, 6]], jnp.int32)
  if wide:  # K = 18; the extra columns point past the rows: no assignment
    slot = jnp.concatenate([slot, jnp.full((tokens, 15), rows, jnp.int32)], axis=1)
    k = 18
  y = jax.random.normal(jax.random.key(0), (rows, 4))
  weight = jax.random.uniform(jax.random.key(1), (tokens, k))
  probe = jax.random.normal(jax.random.key(2), (tokens, 4))
  assignment = inverse_slots(slot.reshape(-1), rows)
  assert int(jnp.sum(assignment < tokens * k)) == 12  # 12 valid, 8 padding rows

  def naive(y, weight):
    picked = jnp.take(y, slot, axis=0, mode="fill", fill_value=0)  # [T, K, d]
    return jnp.sum(jnp.sum(picked * weight[..., None], axis=1) * probe)

  ours = lambda y, weight: jnp.sum(combine_rows(y, slot, weight, assignment) * probe)
  np.testing.assert_allclose(jax.jit(ours)(y, weight), jax.jit(naive)(y, weight), rtol=1e-6)
  grads = lambda f: jax.jit(jax.grad(f, (0, 1)))(y, weight)
  for got, want in zip(grads(ours), grads(naive)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_gmm_differentiates_under_vmap_both_ways():
  lhs = jax.random.normal(jax.random.key(0), (3, 9, 4))
  rhs = jax.random.normal(jax.random.key(1), (2, 4, 5))
  gs = jnp.array([[2, 3], [0, 9], [4, 0]], jnp.int32)
  loss = lambda l, r, g, backend: jnp.sum(jnp.sin(gmm(l, r, g, backend, 2)))
  results = {}
  for backend in ("ragged_dot", "tokamax", "blocked", "einsum"):
    per_group = jax.jit(lambda l, r, g: jax.vmap(jax.grad(loss, argnums=(0, 1)),
                                                 in_axes=(0, None, 0, None))(l, r, g, backend))(
        lhs, rhs, gs)
    batched = jax.jit(jax.grad(lambda l, r: jnp.sum(jax.vmap(loss, in_axes=(0, None, 0, None))(
        l, r, gs, backend)), argnums=(0, 1)))(lhs, rhs)
    results[backend] = (per_group, batched)
  for backend in ("ragged_dot", "tokamax", "blocked"):
    for got, want in zip(jax.tree.leaves(results[backend]), jax.tree.leaves(results["einsum"])):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation,bias,sizes,block", [
    ("gelu", False, [5, 0, 9, 3], 4),     # groups straddle blocks, one is empty
    ("swiglu", True, [7, 2, 0, 8], 4),    # GLU gate and all three biases
    ("clamped_swiglu", True, [6, 6, 2, 3], 4),  # gpt-oss's: clipped at 7, |x| scaled to reach it
    ("relu", False, [4, 4, 8, 0], 4),     # whole blocks (dropless padding)
])
def test_fused_blocked_ffn_equals_the_unfused_reference(activation, bias, sizes, block):
  """blocked_ffn (the whole expert FFN per row block) equals act(x W_in) W_out
  through the einsum gmm, forward and every gradient, with 20 rows of which
  the last few are padding."""
  import functools
  from moejax.experts import hidden_activation
  from moejax.grouped_matmul.blocked_ffn import blocked_ffn
  m, d, f = 20, 6, 10
  keys = jax.random.split(jax.random.key(0), 6)
  x = jax.random.normal(keys[0], (m, d))
  w_in, w_out = jax.random.normal(keys[1], (4, d, f)), jax.random.normal(keys[2], (4, f, d))
  glu = activation in ("swiglu", "clamped_swiglu")
  if activation == "clamped_swiglu":
    x = 4 * x
  w_gate = jax.random.normal(keys[3], (4, d, f)) if glu else None
  b_in = jax.random.normal(keys[4], (4, f)) if bias else None
  b_gate = jax.random.normal(jax.random.fold_in(keys[4], 1), (4, f)) if bias and glu else None
  b_out = jax.random.normal(keys[5], (4, d)) if bias else None
  gs = jnp.array(sizes, jnp.int32)
  act = functools.partial(hidden_activation, activation)
  row_bias = lambda b: jnp.take(b, group_ids(gs, m), axis=0, mode="fill", fill_value=0)

  def reference(x, w_in, w_gate, w_out, b_in, b_gate, b_out):
    h = gmm(x, w_in, gs, "einsum") + (0 if b_in is None else row_bias(b_in))
    gate = None if w_gate is None else gmm(x, w_gate, gs, "einsum")
    gate = gate if b_gate is None else gate + row_bias(b_gate)
    return gmm(act(h, gate), w_out, gs, "einsum") + (0 if b_out is None else row_bias(b_out))

  fused = lambda *args: blocked_ffn(act, block, *args, gs)
  args = (x, w_in, w_gate, w_out, b_in, b_gate, b_out)
  out = jax.jit(fused)(*args)
  np.testing.assert_allclose(out, jax.jit(reference)(*args), rtol=1e-5, atol=1e-5)
  assert not np.any(np.asarray(out)[sum(sizes):])
  cos = jnp.cos(jnp.arange(m * d, dtype=jnp.float32)).reshape(m, d)
  argnums = tuple(i for i, a in enumerate(args) if a is not None)
  loss = lambda fn: jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(fn(*a)) * cos),
                                     argnums=argnums))(*args)
  for got, want in zip(loss(fused), loss(reference)):  # float32 sums in another order
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))


def test_every_config_dispatch_is_one_strategy_called_the_same_way():
  """Each MoEConfig.dispatch value is a registered strategy, and each gives
  the einsum reference's output when called as strategy(x, routing, experts)."""
  import flax.linen as nn
  from moejax.config import DISPATCHES
  from moejax.dispatch import STRATEGIES
  from moejax.experts import ExpertBank
  assert set(DISPATCHES) == set(STRATEGIES)
  cfg = RouterConfig(num_experts=4, top_k=2, capacity_factor=None)
  x = jax.random.normal(jax.random.key(1), (12, 8))
  logits = jax.random.normal(jax.random.key(2), (12, 4))
  routing = route(cfg, logits).routing

  class Layer(nn.Module):
    dispatch: str

    @nn.compact
    def __call__(self, x):
      bank = ExpertBank(num_experts=4, d_model=8, d_ff=16, activation="swiglu", name="experts")
      return get_strategy(self.dispatch, bank.row_layout())(x, routing, bank)

  params = jax.jit(Layer("einsum").init)(jax.random.key(0), x)
  want = jax.jit(Layer("einsum").apply)(params, x)
  for name in STRATEGIES:
    np.testing.assert_allclose(jax.jit(Layer(name).apply)(params, x), want, rtol=1e-5, atol=1e-5,
                               err_msg=name)
