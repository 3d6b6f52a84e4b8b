"""Aux losses against their formulas, and the aux-loss-free bias update."""

import jax
import jax.numpy as jnp
import numpy as np

from moejax import RouterConfig
from moejax.routing import (importance_loss, load_balance_loss, route, router_z_loss,
                            update_expert_bias)


def test_load_balance_is_one_under_uniform_routing():
  probs = jnp.full((16, 4), 0.25)
  counts = jnp.full((4,), 8.0)  # 16 tokens x top-2 spread evenly
  np.testing.assert_allclose(load_balance_loss(probs, counts), 1.0, rtol=1e-6)


def test_load_balance_hand_built_case():
  # 2 tokens, 2 experts, top-1, both pick expert 0: f = [1, 0], P = [0.7, 0.3].
  logits = jnp.log(jnp.array([[0.8, 0.2], [0.6, 0.4]]))
  out = route(RouterConfig(num_experts=2, top_k=1), logits)
  np.testing.assert_allclose(load_balance_loss(out.probs, out.choice_counts), 2 * 0.7, rtol=1e-5)


def test_load_balance_is_num_experts_when_collapsed():
  probs = jnp.zeros((8, 4)).at[:, 2].set(1.0)
  np.testing.assert_allclose(load_balance_loss(probs, jnp.array([0., 0., 8., 0.])), 4.0)


def test_z_loss_formula():
  logits = jax.random.normal(jax.random.key(0), (5, 7)) * 3
  lse = np.log(np.exp(np.asarray(logits, np.float64)).sum(-1))
  np.testing.assert_allclose(router_z_loss(logits), np.mean(lse ** 2), rtol=1e-5)


def test_importance_loss_is_squared_cv():
  probs = jnp.array([[0.5, 0.25, 0.25], [0.9, 0.05, 0.05]])
  imp = np.array([1.4, 0.3, 0.3])
  np.testing.assert_allclose(importance_loss(probs), imp.var() / imp.mean() ** 2, rtol=1e-5)
  np.testing.assert_allclose(importance_loss(jnp.full((4, 3), 1 / 3)), 0.0, atol=1e-7)


def test_aux_loss_free_bias_moves_load_toward_uniform():
  # Router strongly prefers experts 0 and 1; the bias update must even this out.
  logits = jax.random.normal(jax.random.key(0), (512, 8)) + jnp.array([2.0, 1.5] + [0.0] * 6)
  cfg = RouterConfig(num_experts=8, top_k=2, score_fn="sigmoid", use_expert_bias=True,
                     normalize_top_k=True)
  step = jax.jit(lambda b: route(cfg, logits, expert_bias=b).routing.tokens_per_expert())
  bias = jnp.zeros(8)
  start = step(bias)
  for _ in range(300):
    bias = update_expert_bias(bias, step(bias), rate=0.005)
  end = step(bias)
  balance = lambda load: float(load.max() / load.mean())
  assert balance(start) > 2.0, start
  assert balance(end) < 1.25, end
  assert float(bias[0]) < 0 < float(bias[7])  # overloaded experts pushed down
