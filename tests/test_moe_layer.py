"""The Flax MoE layer: gradients by finite differences for every router
family, jit/vmap, shared experts, the dense baseline and dtypes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax import DenseFFNLayer, MoEConfig, MoELayer, RouterConfig
from moejax.routing import update_expert_bias
from moejax.routing.product_keys import ProductKeyOptions
from moejax.routing.soft_moe import SoftMoEOptions
from tests.helpers import ROUTER_CASES

FD_CASES = dict(ROUTER_CASES)
FD_CASES["soft_moe"] = RouterConfig(name="soft_moe", num_experts=3, top_k=1,
                                    options=SoftMoEOptions(num_slots=2))


def _layer(router, **kw):
  dispatch = "einsum" if router.name == "soft_moe" else "dropless"
  base = dict(router=router, d_model=6, d_ff=10, activation="swiglu", dispatch=dispatch,
              use_bias=True)
  base.update(kw)
  return MoELayer(MoEConfig(**base))


@pytest.mark.parametrize("case", sorted(FD_CASES))
def test_gradients_match_finite_differences(case):
  with jax.enable_x64(True):
    layer = _layer(FD_CASES[case], dtype="float64", num_shared_experts=1,
                   shared_expert_gate=True)
    x = jax.random.normal(jax.random.key(0), (2, 5, 6), jnp.float64)
    ids = jnp.arange(10).reshape(2, 5)
    variables = jax.jit(layer.init)(jax.random.key(1), x, token_ids=ids)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), variables["params"])
    weights = jnp.sin(jnp.arange(60.0)).reshape(2, 5, 6)

    @jax.jit
    def loss(params, x):
      y, aux = layer.apply({**variables, "params": params}, x, token_ids=ids)
      return jnp.sum(y * weights) + 0.1 * sum(aux.losses.values())

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    rng = np.random.default_rng(0)
    for _ in range(3):
      direction = jax.tree.map(lambda g: jnp.asarray(rng.normal(size=g.shape)), (params, x))
      eps = 1e-6
      shift = lambda s: jax.tree.map(lambda p, d: p + s * eps * d, (params, x), direction)
      numeric = (loss(*shift(1.0)) - loss(*shift(-1.0))) / (2 * eps)
      analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads),
                                                    jax.tree.leaves(direction)))
      np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-6)


def test_jit_and_vmap_over_groups():
  layer = _layer(ROUTER_CASES["top_k_capacity"])
  x = jax.random.normal(jax.random.key(0), (3, 8, 6))  # 3 groups of 8 tokens
  variables = jax.jit(layer.init)(jax.random.key(1), x[0])
  apply = lambda v, g: layer.apply(v, g)[0]
  per_group = jnp.stack([jax.jit(apply)(variables, x[i]) for i in range(3)])
  vmapped = jax.jit(jax.vmap(apply, in_axes=(None, 0)))(variables, x)
  np.testing.assert_allclose(vmapped, per_group, rtol=1e-5, atol=1e-6)
  # Routing the 24 tokens as one group differs (capacity is per group).
  assert not np.allclose(jax.jit(apply)(variables, x), per_group, atol=1e-6)


def test_shared_experts_with_gate_add_gated_dense_ffn():
  layer = _layer(ROUTER_CASES["top_k_dropless"], num_shared_experts=2, shared_d_ff=4,
                 shared_expert_gate=True)
  x = jax.random.normal(jax.random.key(0), (7, 6))
  variables = jax.jit(layer.init)(jax.random.key(1), x)
  p = variables["params"]
  assert p["shared"]["w_in"]["kernel"].shape == (6, 8)  # 2 shared experts x 4 fused
  zeroed = jax.tree.map(jnp.zeros_like, p["experts"])
  y, _ = jax.jit(layer.apply)({"params": {**p, "experts": zeroed}}, x)  # routed part is 0
  s = p["shared"]
  silu = lambda z: z / (1 + jnp.exp(-z))
  h = (x @ s["w_in"]["kernel"] + s["w_in"]["bias"]) * silu(x @ s["w_gate"]["kernel"]
                                                           + s["w_gate"]["bias"])
  shared = h @ s["w_out"]["kernel"] + s["w_out"]["bias"]
  gate = jax.nn.sigmoid(x @ p["shared_gate"]["kernel"])
  np.testing.assert_allclose(y, shared * gate, rtol=1e-5, atol=1e-6)


def test_dense_baseline_has_same_interface():
  moe = _layer(ROUTER_CASES["top_k_dropless"])
  dense = DenseFFNLayer(d_model=6, d_ff=20, activation="swiglu")
  x = jnp.ones((2, 3, 6))
  for layer in (moe, dense):
    v = jax.jit(layer.init)(jax.random.key(0), x)
    y, aux = jax.jit(lambda v, x: layer.apply(v, x, token_ids=None, deterministic=False))(v, x)
    assert y.shape == x.shape
    assert set(aux.losses) == {"load_balance", "z_loss", "importance", "mutual_information",
                               "family"}


def test_bfloat16_experts_close_to_float32():
  router = ROUTER_CASES["top_k_dropless"]
  x = jax.random.normal(jax.random.key(0), (16, 6))
  f32 = _layer(router)
  variables = jax.jit(f32.init)(jax.random.key(1), x)
  y32, _ = jax.jit(f32.apply)(variables, x)
  for dispatch in ("einsum", "dropless"):
    y16, _ = jax.jit(_layer(router, dtype="bfloat16", dispatch=dispatch).apply)(variables, x)
    assert y16.dtype == x.dtype
    np.testing.assert_allclose(y16, y32, rtol=0.05, atol=0.05)


def test_stochastic_routing_uses_router_rng_only_in_training():
  router = dataclasses.replace(ROUTER_CASES["top_k_dropless"], jitter_noise=0.5, noisy_top_k=True)
  layer = _layer(router)
  x = jax.random.normal(jax.random.key(0), (32, 6))
  v = jax.jit(layer.init)(jax.random.key(1), x)
  y_eval, _ = jax.jit(layer.apply)(v, x)  # deterministic: no rng needed
  train = jax.jit(lambda v, x, key: layer.apply(v, x, deterministic=False, rngs={"router": key}))
  y_a, _ = train(v, x, jax.random.key(2))
  y_b, _ = train(v, x, jax.random.key(2))
  np.testing.assert_array_equal(y_a, y_b)
  assert not np.allclose(y_a, y_eval)


def test_expert_bias_lives_in_router_state_and_rebalances():
  router = RouterConfig(num_experts=4, top_k=1, score_fn="sigmoid", use_expert_bias=True)
  layer = _layer(router)
  x = jax.random.normal(jax.random.key(0), (256, 6)) + 2.0  # skewed inputs
  v = jax.jit(layer.init)(jax.random.key(1), x)
  assert v["router_state"]["router"]["expert_bias"].shape == (4,)
  step = jax.jit(lambda v: layer.apply(v, x)[1].metrics["tokens_per_expert"])
  start = step(v)
  for _ in range(200):
    bias = v["router_state"]["router"]["expert_bias"]
    v = {**v, "router_state": {"router": {"expert_bias": update_expert_bias(bias, step(v), 0.01)}}}
  end = step(v)
  assert float(end.max() / end.mean()) < float(start.max() / start.mean())
  assert float(end.max() / end.mean()) < 1.3


def test_metrics_report_drops_and_entropy():
  router = RouterConfig(num_experts=4, top_k=1, capacity_factor=0.5)
  layer = _layer(router, dispatch="gather")
  x = jax.random.normal(jax.random.key(0), (40, 6))
  v = jax.jit(layer.init)(jax.random.key(1), x)
  _, aux = jax.jit(layer.apply)(v, x)
  m = aux.metrics
  kept = float(m["tokens_per_expert"].sum())
  assert kept <= 4 * 5  # capacity = ceil(0.5 * 40 / 4) = 5
  np.testing.assert_allclose(m["fraction_dropped"], 1 - kept / 40, rtol=1e-6)
  assert 0 < float(m["router_entropy"]) <= np.log(4) + 1e-6
  assert float(m["balance"]) >= 1.0
  np.testing.assert_allclose(m["experts_per_token"], kept / 40, rtol=1e-6)  # top-1 after drops


def test_wrong_input_width_is_a_clear_error():
  layer = _layer(ROUTER_CASES["top_k_dropless"])
  with pytest.raises(ValueError, match="input last dim 5 != d_model=6"):
    jax.jit(layer.init)(jax.random.key(0), jnp.ones((3, 5)))


def _soft_moe_layer(**options):
  cfg = MoEConfig(router=RouterConfig(name="soft_moe", num_experts=3, top_k=1,
                                      options=SoftMoEOptions(num_slots=2, **options)),
                  d_model=8, d_ff=16, activation="relu", dispatch="einsum")
  return MoELayer(cfg)


def test_soft_moe_routes_each_example_alone():
  """Per-example slots (the default): an example's output is the output of
  the layer on that example alone, whatever its batch neighbours are."""
  layer = _soft_moe_layer()
  x = jax.random.normal(jax.random.key(0), (4, 5, 8))
  variables = jax.jit(layer.init)(jax.random.key(1), x)
  y, _ = jax.jit(layer.apply)(variables, x)
  for i in range(4):
    alone, _ = jax.jit(layer.apply)(variables, x[i:i + 1])
    np.testing.assert_allclose(y[i], alone[0], atol=1e-6)
  call = _soft_moe_layer(grouping="call")
  mixed, _ = jax.jit(call.apply)(variables, x)
  assert np.abs(mixed[0] - y[0]).max() > 1e-3   # 'call' shares slots across the batch


def _soft_moe_numpy(x, params, scale=None):
  """Soft MoE from the paper's equations, one example x [m, d], in NumPy:
  D = softmax_columns(X Phi), X~ = D^T X, Y~_i = f_i(X~_i), C =
  softmax_rows(X Phi), Y = C Y~ (vmoe normalisation: X, Phi L2-normalised,
  logits times scale)."""
  phi = np.asarray(params["router"]["kernel"], np.float64)
  x = np.asarray(x, np.float64)
  if scale is not None:
    x_n = x / np.sqrt((x * x).sum(-1, keepdims=True) + 1e-6)
    phi_n = phi / np.sqrt((phi * phi).sum(0, keepdims=True) + 1e-6)
    logits = scale * x_n @ phi_n
  else:
    logits = x @ phi
  softmax = lambda a, axis: np.exp(a - a.max(axis, keepdims=True)) / np.exp(
      a - a.max(axis, keepdims=True)).sum(axis, keepdims=True)
  dispatch, combine = softmax(logits, 0), softmax(logits, 1)
  slots_in = dispatch.T @ x                                       # [E * n, d]
  w_in = np.asarray(params["experts"]["w_in"], np.float64)        # [E, d, f]
  w_out = np.asarray(params["experts"]["w_out"], np.float64)      # [E, f, d]
  experts, slots = w_in.shape[0], slots_in.shape[0] // w_in.shape[0]
  outs = [np.maximum(slots_in[e * slots:(e + 1) * slots] @ w_in[e], 0) @ w_out[e]
          for e in range(experts)]
  return combine @ np.concatenate(outs)


@pytest.mark.parametrize("normalize", [False, True])
def test_soft_moe_matches_the_paper_equations(normalize):
  layer = _soft_moe_layer(normalize=normalize)
  x = jax.random.normal(jax.random.key(2), (2, 5, 8)) * 3.0
  variables = jax.jit(layer.init)(jax.random.key(3), x)
  params = variables["params"]
  if normalize:
    params = {**params, "router": {**params["router"], "scale": jnp.float32(2.5)}}
  y, _ = jax.jit(layer.apply)({"params": params}, x)
  for i in range(2):
    expected = _soft_moe_numpy(x[i], params, 2.5 if normalize else None)
    np.testing.assert_allclose(y[i], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("router, dispatch, training", [
    (dict(name="product_key", num_experts=16, top_k=2, options=ProductKeyOptions(heads=2, key_dim=4)),
     "retrieval", False),
    (dict(name="expert_threshold"), "dropless", False),
    (dict(num_null_experts=1, num_copy_experts=1, num_constant_experts=1), "dropless", False),
    (dict(dense_training=True), "dropless", True),
], ids=["peer", "expert_threshold", "moe_plus_plus", "ds_moe_training"])
def test_literature_designs_vmap_like_a_loop_and_take_gradients(router, dispatch, training):
  """vmap over groups of tokens equals applying the layer group by group,
  under jit, and the loss has finite gradients for every parameter."""
  from moejax.config import MoEConfig, RouterConfig
  from moejax.moe import MoELayer
  fields = {"num_experts": 4, "top_k": 2, "capacity_factor": None, **router}
  layer = MoELayer(MoEConfig(router=RouterConfig(**fields), d_model=6,
                             d_ff=1 if dispatch == "retrieval" else 5, dispatch=dispatch,
                             gmm_block_size=4))
  x = jax.random.normal(jax.random.key(0), (3, 8, 6))
  variables = jax.jit(layer.init)(jax.random.key(1), x[0])
  apply = lambda p, g: layer.apply({**variables, "params": p}, g,
                                   deterministic=not training)[0]
  per_group = jnp.stack([jax.jit(apply)(variables["params"], x[i]) for i in range(3)])
  vmapped = jax.jit(jax.vmap(apply, in_axes=(None, 0)))(variables["params"], x)
  np.testing.assert_allclose(vmapped, per_group, rtol=1e-5, atol=1e-6)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(jax.vmap(apply, in_axes=(None, 0))(p, x) ** 2)))(
      variables["params"])
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["experts"]))
