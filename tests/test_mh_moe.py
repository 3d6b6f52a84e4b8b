"""MH-MoE (moejax.moe.MultiHeadMoELayer) against a per-token NumPy loop
written from the paper's equations (Wu et al. 2024, multi-head MoE)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax import MoEConfig, MoELayer, MultiHeadMoELayer, RouterConfig
from moejax.models import ModelConfig, build_model


def _config(heads=4, projections=True, dispatch="dropless", **router):
  router = RouterConfig(**{"num_experts": 5, "top_k": 2, "normalize_top_k": True, **router})
  return MoEConfig(router=router, d_model=16, d_ff=12, activation="relu", dispatch=dispatch,
                   mh_heads=heads, mh_projections=projections)


def _reference(params, x, cfg):
  """For each token: u = x W_split, h sub-tokens of d / h; each: softmax
  router, top-k, weights renormalised over the k, y = sum_k w_k relu(s W_in)
  W_out; the token's output: concat(y_1..y_h) W_merge."""
  heads, width, k = cfg.mh_heads, cfg.d_model // cfg.mh_heads, cfg.router.top_k
  inner = params["sub_moe"]
  w_router = np.asarray(inner["router"]["kernel"], np.float64)
  w_in = np.asarray(inner["experts"]["w_in"], np.float64)
  w_out = np.asarray(inner["experts"]["w_out"], np.float64)
  out = []
  for token in np.asarray(x, np.float64):
    u = token @ np.asarray(params["mh_split"]["kernel"], np.float64)
    pieces = []
    for sub in u.reshape(heads, width):
      logits = sub @ w_router
      probs = np.exp(logits - logits.max())
      probs /= probs.sum()
      top = np.argsort(-probs, kind="stable")[:k]
      gates = probs[top] / probs[top].sum()
      pieces.append(sum(g * (np.maximum(sub @ w_in[e], 0) @ w_out[e]) for g, e in zip(gates, top)))
    out.append(np.concatenate(pieces) @ np.asarray(params["mh_merge"]["kernel"], np.float64))
  return np.stack(out)


@pytest.mark.parametrize("dispatch", ["einsum", "dropless"])
def test_mh_moe_equals_the_per_token_loop(dispatch):
  cfg = _config(dispatch=dispatch, capacity_factor=4.0 if dispatch == "einsum" else None)
  x = jax.random.normal(jax.random.key(0), (10, 16))
  layer = MultiHeadMoELayer(cfg)
  variables = jax.jit(layer.init)(jax.random.key(1), x)
  y, aux = jax.jit(layer.apply)(variables, x)
  assert float(aux.metrics["fraction_dropped"]) == 0.0
  assert float(aux.metrics["tokens_per_expert"].sum()) == 10 * 4 * 2  # sub-tokens x top-2
  np.testing.assert_allclose(y, _reference(variables["params"], x, cfg), rtol=1e-4, atol=1e-5)


def test_one_head_without_projections_is_the_plain_layer():
  cfg = _config(heads=1, projections=False)
  x = jax.random.normal(jax.random.key(0), (3, 7, 16))
  plain = MoELayer(dataclasses.replace(cfg, mh_projections=True))
  variables = jax.jit(plain.init)(jax.random.key(1), x)
  wrapped = jax.jit(MultiHeadMoELayer(cfg).apply)({"params": {"sub_moe": variables["params"]}}, x)
  np.testing.assert_array_equal(wrapped[0], jax.jit(plain.apply)(variables, x)[0])


def test_mh_moe_gradients_match_finite_differences():
  with jax.enable_x64(True):
    cfg = dataclasses.replace(_config(), dtype="float64")
    layer = MultiHeadMoELayer(cfg)
    x = jax.random.normal(jax.random.key(0), (2, 3, 16), jnp.float64)
    variables = jax.jit(layer.init)(jax.random.key(1), x)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), variables["params"])
    probe = jnp.cos(jnp.arange(96.0)).reshape(2, 3, 16)
    loss = jax.jit(lambda p, x: jnp.sum(layer.apply({"params": p}, x)[0] * probe))
    grads = jax.grad(loss, argnums=(0, 1))(params, x)
    rng = np.random.default_rng(0)
    for _ in range(3):
      direction = jax.tree.map(lambda g: jnp.asarray(rng.normal(size=g.shape)), (params, x))
      shift = lambda s: jax.tree.map(lambda p, d: p + s * 1e-6 * d, (params, x), direction)
      numeric = (loss(*shift(1.0)) - loss(*shift(-1.0))) / 2e-6
      analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads),
                                                    jax.tree.leaves(direction)))
      np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-6)


def test_lm_with_mh_moe_is_causal_and_refused_where_it_cannot_go():
  moe = dataclasses.replace(_config(), dispatch="dropless")
  config = ModelConfig(num_layers=2, d_model=16, num_heads=2, dense_d_ff=32, moe_every=1, moe=moe)
  model = build_model(config)
  tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, 256)
  variables = jax.jit(model.init)(jax.random.key(1), tokens)
  assert set(variables["params"]["block_0"]["moe"]) == {"mh_split", "mh_merge", "sub_moe"}
  logits = jax.jit(model.apply)(variables, tokens)[0]
  changed = jax.jit(model.apply)(variables, tokens.at[:, 7].set((tokens[:, 7] + 1) % 256))[0]
  np.testing.assert_allclose(logits[:, :7], changed[:, :7], atol=1e-6)
  assert float(jnp.abs(logits[:, 7:] - changed[:, 7:]).max()) > 1e-4
  with pytest.raises(ValueError, match="mh_heads=3 is invalid: must divide d_model=16"):
    _config(heads=3)
  from moejax.compress import prune_experts
  with pytest.raises(ValueError, match="mh_heads=4: MH-MoE layers cannot be pruned"):
    prune_experts(config, variables, [[0, 1, 2], [0, 1, 2]])
