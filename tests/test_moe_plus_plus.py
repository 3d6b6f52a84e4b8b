"""MoE++ (zero / copy / constant experts and the gating residual): the layer
equals a per-token NumPy loop of the paper's equations, zero-computation
choices never reach the grouped matmul, the zero-initialised gating residual
starts as the plain model, the LM stays causal and generates."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.config import MoEConfig, RouterConfig
from moejax.dispatch.dropless import grouped_slots
from moejax.models import ModelConfig, TransformerLM
from moejax.models.config import LMConfig
from moejax.moe import MoELayer
from lm_checks import assert_causal, assert_generates_like_recomputation

E, D, F = 4, 8, 12


def _config(dispatch="dropless", **router):
  fields = {**dict(num_experts=E, top_k=3, num_null_experts=1, num_copy_experts=1,
                  num_constant_experts=2, gating_residual=True), **router}
  return MoEConfig(router=RouterConfig(**fields), d_model=D, d_ff=F, activation="gelu",
                   dispatch=dispatch, gmm_block_size=4)


@pytest.mark.parametrize("dispatch", ["dropless", "einsum"])
def test_layer_equals_the_per_token_loop_of_the_papers_equations(dispatch):
  """logits = x W + prev W_g; top-3 of softmax over 4 FFN + 1 zero + 1 copy
  + 2 constant experts; y = sum of w * [FFN_e(x) | 0 | x | a1 x + a2 v_j];
  heterogeneous load balance N * sum_i eta_i f_i P_i, eta = tau on the
  zero-computation experts (tau = 0.75, the paper's default)."""
  tau = 0.75
  cfg = _config(dispatch, zero_computation_balance_weight=tau)
  layer = MoELayer(cfg)
  x = jax.random.normal(jax.random.key(0), (30, D))
  prev = jax.random.normal(jax.random.key(1), (30, 8))
  variables = jax.tree.map(np.asarray, jax.jit(layer.init)(jax.random.key(2), x,
                                                           prev_router_logits=prev))
  rng = np.random.default_rng(3)
  params = variables["params"]
  params["router"]["gating_residual"] = rng.normal(size=(8, 8)).astype(np.float32)
  params["zero_computation"]["constant_gates"] = rng.normal(size=(2, D, 2)).astype(np.float32)
  y, aux = jax.jit(layer.apply)(variables, x, prev_router_logits=prev)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  xs, ps = np.asarray(x, np.float64), np.asarray(prev, np.float64)
  logits = xs @ p["router"]["kernel"] + ps @ p["router"]["gating_residual"]
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  gelu = lambda h: np.asarray(jax.nn.gelu(jnp.asarray(h)))
  ex, zc = p["experts"], p["zero_computation"]
  expected = np.zeros_like(xs)
  kinds = {"ffn": 0, "zero": 0, "copy": 0, "constant": 0}
  counts = np.zeros(8)
  for t in range(len(xs)):
    for e in np.argsort(-probs[t], kind="stable")[:3]:
      w = probs[t, e]
      counts[e] += 1
      if e < E:
        expected[t] += w * (gelu(xs[t] @ ex["w_in"][e]) @ ex["w_out"][e])
        kinds["ffn"] += 1
      elif e == E:
        kinds["zero"] += 1
      elif e == E + 1:
        expected[t] += w * xs[t]
        kinds["copy"] += 1
      else:
        j = e - E - 2
        gate = xs[t] @ zc["constant_gates"][j]
        a = np.exp(gate - gate.max())
        a /= a.sum()
        expected[t] += w * (a[0] * xs[t] + a[1] * zc["constant_vectors"][j])
        kinds["constant"] += 1
  np.testing.assert_allclose(np.asarray(y), expected, atol=1e-5)
  assert all(kinds.values()), kinds  # every kind of expert was exercised
  np.testing.assert_allclose(aux.metrics["fraction_null"], 1 - kinds["ffn"] / 90, rtol=1e-6)
  np.testing.assert_array_equal(aux.router_logits.shape, (30, 8))
  eta = np.array([1.0] * E + [tau] * 4)
  balance = 8 * np.sum(eta * counts / counts.sum() * probs.mean(0))
  np.testing.assert_allclose(aux.losses["load_balance"], balance, rtol=1e-5)


def test_zero_computation_choices_never_reach_the_grouped_matmul():
  """The rows dropless dispatch hands the grouped matmul are exactly the
  choices of FFN experts: null, copy and constant choices add none."""
  from moejax.moe import Router
  cfg = _config()
  x = jax.random.normal(jax.random.key(4), (40, D))
  variables = jax.jit(MoELayer(cfg).init)(jax.random.key(5), x)
  out = jax.jit(Router(cfg.router).apply)({"params": variables["params"]["router"]}, x)
  real_choices = int(out.choice_counts[:E].sum())
  assert real_choices < 40 * 3  # some choices went to zero-computation experts
  assert int(out.routing.valid.sum()) == real_choices
  _, group_sizes, _ = grouped_slots(out.routing, block_size=1)
  assert int(group_sizes.sum()) == real_choices


def _lm(**router):
  moe = _config(**router)
  return TransformerLM(ModelConfig(num_layers=3, d_model=D, num_heads=2, dense_d_ff=16,
                                   moe_every=1, moe=moe,
                                   lm=LMConfig(vocab_size=256, tie_embeddings=False)))


def test_zero_initialised_gating_residual_starts_as_the_plain_model_and_stays_causal():
  model, plain = _lm(), _lm(gating_residual=False)
  tokens = jax.random.randint(jax.random.key(6), (2, 10), 0, 256)
  variables = jax.jit(model.init)(jax.random.key(7), tokens)
  residuals = [k for k in ("block_0", "block_1", "block_2")
               if "gating_residual" in variables["params"][k]["moe"]["router"]]
  assert residuals == ["block_1", "block_2"]  # every MoE layer after the first
  without = jax.tree.map(lambda a: a, variables)
  for k in residuals:
    del without["params"][k]["moe"]["router"]["gating_residual"]
  forward = jax.jit(lambda v, t: model.apply(v, t)[0])
  plain_logits = jax.jit(lambda v, t: plain.apply(v, t)[0])(without, tokens)
  np.testing.assert_allclose(forward(variables, tokens), plain_logits, atol=1e-6)
  for k in residuals:
    variables["params"][k]["moe"]["router"]["gating_residual"] = jax.random.normal(
        jax.random.key(8), (8, 8))
  assert float(jnp.abs(forward(variables, tokens) - plain_logits).max()) > 1e-4
  assert_causal(lambda t: forward(variables, t), tokens, 6)
  assert_generates_like_recomputation(model, variables, np.asarray(tokens[:, :3], np.int32), 4)


@pytest.mark.parametrize("make, message", [
    (lambda: RouterConfig(name="expert_choice", capacity_factor=1.0, num_copy_experts=1),
     "router.num_copy_experts=1 is invalid: only used by router.name in \\['top_k', 'threshold'\\]"),
    (lambda: RouterConfig(num_experts=4, num_expert_groups=2, top_k_groups=1,
                          num_constant_experts=1),
     "router.num_constant_experts=1 is invalid: zero-computation .* must be 0"),
    (lambda: RouterConfig(num_experts=2, top_k=4, num_copy_experts=1),
     "router.top_k=4 is invalid: must be <= num_experts \\+ zero-computation"),
    (lambda: dataclasses.replace(_config(), router=dataclasses.replace(
        _config().router, dense_training=True)),
     "router.dense_training=True is invalid: trains only the routed experts densely"),
    (lambda: RouterConfig(num_experts=4, zero_computation_balance_weight=0.75),
     "router.zero_computation_balance_weight=0.75 is invalid: weights the zero-computation"),
    (lambda: RouterConfig(num_experts=4, num_null_experts=1,
                          zero_computation_balance_weight=0.0),
     "router.zero_computation_balance_weight=0.0 is invalid: must be a finite number > 0"),
    (lambda: RouterConfig(name="soft_moe", capacity_factor=None, gating_residual=True),
     "router.gating_residual=True is invalid: only used by router.name in \\['top_k'"),
])
def test_impossible_combinations_are_refused_in_one_line(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_gating_residual_models_are_refused_by_pruning():
  from moejax.compress import prune_experts
  model = _lm()
  tokens = jnp.zeros((1, 4), jnp.int32)
  variables = jax.jit(model.init)(jax.random.key(9), tokens)
  with pytest.raises(ValueError, match="router.gating_residual=True: layers with MoE\\+\\+'s"):
    prune_experts(model.config, variables, [[0, 1, 2]] * 3)
