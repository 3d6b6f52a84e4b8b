"""ReMoE's ReLU routing against a per-token loop of the paper's equations:
the gates, the layer's output, the load-balanced L1 penalty, the adaptive
coefficient, and gradients by finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax import MoEConfig, MoELayer, RouterConfig
from moejax.routing import route
from moejax.routing.remoe import ReMoEOptions, next_l1_weight

E, K, D, F = 6, 2, 8, 12


def _config(balanced=True, **router):
  return MoEConfig(router=RouterConfig(name="remoe", num_experts=E, top_k=K,
                                       options=ReMoEOptions(balanced=balanced), **router),
                   d_model=D, d_ff=F, activation="gelu", dispatch="dropless")


def _penalty_loop(logits, balanced):
  """L_reg = 1/T sum_t sum_e f_e g_te, f_e = E / (K T) #{t: g_te > 0} (or 1)."""
  T = len(logits)
  gates = [[max(0.0, float(v)) for v in row] for row in logits]
  total = 0.0
  for e in range(E):
    f = E / (K * T) * sum(1 for t in range(T) if gates[t][e] > 0) if balanced else 1.0
    total += f * sum(gates[t][e] for t in range(T))
  return total / T


@pytest.mark.parametrize("balanced", [True, False])
def test_route_matches_the_equations_token_by_token(balanced):
  logits = np.asarray(jax.random.normal(jax.random.key(0), (10, E)))
  cfg = RouterConfig(name="remoe", num_experts=E, top_k=K,
                     options=ReMoEOptions(balanced=balanced))
  out = route(cfg, jnp.asarray(logits), l1_weight=jnp.float32(0.5))
  r = out.routing
  for t in range(10):
    for e in range(E):
      gate = max(0.0, logits[t, e])
      assert bool(r.valid[t, e]) == (gate > 0)
      assert float(r.weight[t, e]) == pytest.approx(gate, abs=1e-6)
      assert int(r.expert_index[t, e]) == e
  # Positions: the order in which each expert receives its tokens.
  for e in range(E):
    taken = [t for t in range(10) if logits[t, e] > 0]
    assert [int(r.position[t, e]) for t in taken] == list(range(len(taken)))
  assert float(out.family_loss) == pytest.approx(0.5 * _penalty_loop(logits, balanced), rel=1e-5)
  np.testing.assert_array_equal(out.choice_counts, (logits > 0).sum(0))


def test_coefficient_moves_toward_the_target_sparsity():
  """lambda <- lambda * alpha ** sign((1 - K/E) - S): up while too few gates
  are 0, down while too many, unchanged on target."""
  cfg = RouterConfig(name="remoe", num_experts=E, top_k=K)   # target S = 2/3
  dense = jnp.ones((6, E), bool)                             # S = 0
  sparse = jnp.zeros((6, E), bool)                           # S = 1
  on_target = jnp.zeros((6, E), bool).at[:, :K].set(True)    # S = 2/3
  lam = jnp.float32(1e-3)
  assert float(next_l1_weight(lam, dense, cfg)) == pytest.approx(1.2e-3)
  assert float(next_l1_weight(lam, sparse, cfg)) == pytest.approx(1e-3 / 1.2)
  assert float(next_l1_weight(lam, on_target, cfg)) == pytest.approx(1e-3)


def test_layer_output_is_the_relu_weighted_sum_of_experts():
  cfg = _config()
  x = jax.random.normal(jax.random.key(1), (9, D))
  layer = MoELayer(cfg)
  variables = jax.jit(layer.init)(jax.random.key(2), x)
  y, aux = jax.jit(layer.apply)(variables, x)
  p = variables["params"]
  gates = np.maximum(np.asarray(x @ p["router"]["kernel"]), 0.0)
  w_in, w_out = np.asarray(p["experts"]["w_in"]), np.asarray(p["experts"]["w_out"])
  gelu = lambda h: np.asarray(jax.nn.gelu(jnp.asarray(h)))
  for t in range(9):
    expected = sum(gates[t, e] * (gelu(np.asarray(x[t]) @ w_in[e]) @ w_out[e])
                   for e in range(E) if gates[t, e] > 0)
    np.testing.assert_allclose(y[t], expected, rtol=2e-5, atol=2e-6)
  # The family loss is lambda_0 * L_reg, unweighted by the trainer.
  lam0 = ReMoEOptions().initial_weight
  assert float(aux.losses["family"]) == pytest.approx(lam0 * _penalty_loop(gates, True),
                                                      rel=1e-4)


def test_training_calls_update_the_coefficient_in_router_state():
  cfg = _config()
  x = jax.random.normal(jax.random.key(3), (16, D))
  layer = MoELayer(cfg)
  variables = jax.jit(layer.init)(jax.random.key(4), x)
  lam = float(variables["router_state"]["router"]["l1_weight"])
  _, state = jax.jit(lambda v, x: layer.apply(v, x, deterministic=False,
                                              mutable=["router_state"]))(variables, x)
  valid = np.asarray(x @ variables["params"]["router"]["kernel"]) > 0
  sparsity = 1 - valid.mean()
  factor = 1.2 ** np.sign((1 - K / E) - sparsity)
  assert float(state["router_state"]["router"]["l1_weight"]) == pytest.approx(lam * factor)
  # Inference calls leave it alone.
  _, same = jax.jit(lambda v, x: layer.apply(v, x, mutable=["router_state"]))(variables, x)
  assert float(same["router_state"]["router"]["l1_weight"]) == pytest.approx(lam)


def test_gradients_match_finite_differences():
  """The router is differentiable through the ReLU gates (away from 0)."""
  with jax.enable_x64(True):
    cfg = MoEConfig(router=RouterConfig(name="remoe", num_experts=E, top_k=K),
                    d_model=D, d_ff=F, activation="gelu", dispatch="dropless", dtype="float64")
    layer = MoELayer(cfg)
    x = jax.random.normal(jax.random.key(5), (7, D), jnp.float64)
    variables = jax.jit(layer.init)(jax.random.key(6), x)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), variables["params"])
    weights = jnp.cos(jnp.arange(7.0 * D)).reshape(7, D)

    @jax.jit
    def loss(params):
      y, aux = layer.apply({**variables, "params": params}, x)
      return jnp.sum(y * weights) + 1e6 * aux.losses["family"]

    grads = jax.jit(jax.grad(loss))(params)
    assert float(jnp.abs(grads["router"]["kernel"]).sum()) > 0
    rng = np.random.default_rng(0)
    for _ in range(3):
      direction = jax.tree.map(lambda g: jnp.asarray(rng.normal(size=g.shape)), params)
      eps = 1e-7
      shift = lambda s: jax.tree.map(lambda p, d: p + s * eps * d, params, direction)
      numeric = (loss(shift(1.0)) - loss(shift(-1.0))) / (2 * eps)
      analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads),
                                                    jax.tree.leaves(direction)))
      np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_bad_options_are_refused_in_one_line():
  with pytest.raises(ValueError, match=r"^router.remoe.alpha=1.0 is invalid: must be a finite "
                                       r"number > 1"):
    ReMoEOptions(alpha=1.0)
  with pytest.raises(ValueError, match=r"^router.top_k=6 is invalid: .* must be < num_experts"):
    RouterConfig(name="remoe", num_experts=E, top_k=E)
  with pytest.raises(ValueError, match=r"^router.capacity_factor=1.0 is invalid: "
                                       r"router.name='remoe' never drops"):
    RouterConfig(name="remoe", num_experts=E, top_k=K, capacity_factor=1.0)
