"""Aux losses against their formulas, and the aux-loss-free bias update."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


def test_load_balance_loss_relates_to_transformers_by_top_k():
  """transformers' Mixtral-style load_balancing_loss_func counts top-k
  assignments per token (fractions sum to top_k, not 1) and pools counts and
  probabilities over all layers before the product. One layer: theirs = top_k
  x ours; several layers: theirs = top_k x ours computed on the layer-pooled
  fractions and probabilities (ours averages the per-layer losses instead)."""
  torch = pytest.importorskip("torch")
  from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
  num_experts, top_k = 6, 2
  cfg = RouterConfig(num_experts=num_experts, top_k=top_k)
  layers = [jax.random.normal(jax.random.key(i), (40, num_experts)) * 2 for i in range(3)]
  outs = [route(cfg, logits) for logits in layers]
  theirs = lambda ls: float(load_balancing_loss_func(
      tuple(torch.tensor(np.asarray(l)) for l in ls), num_experts, top_k))
  ours = [float(load_balance_loss(o.probs, o.choice_counts)) for o in outs]
  assert theirs(layers[:1]) == pytest.approx(top_k * ours[0], rel=1e-5)
  pooled = load_balance_loss(jnp.concatenate([o.probs for o in outs]),
                             sum(o.choice_counts for o in outs))
  assert theirs(layers) == pytest.approx(top_k * float(pooled), rel=1e-5)
  assert theirs(layers) != pytest.approx(top_k * np.mean(ours), rel=1e-3)   # pooling differs
