"""Router behaviour against explicit NumPy references and stated properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax import RouterConfig
from moejax.routing import assign_positions
from moejax.routing import route as eager_route
from moejax.routing.balanced import sinkhorn_log_plan
from moejax.routing.hashing import hash_expert
from moejax.routing.balanced import SinkhornOptions
from moejax.routing.soft_moe import SoftMoEOptions
from moejax.routing.threshold import ThresholdOptions
from tests.helpers import compiled

route = compiled(eager_route)


def _logits(t=32, e=8, seed=0, scale=1.0):
  return jax.random.normal(jax.random.key(seed), (t, e)) * scale


def _softmax(z):
  z = np.asarray(z, np.float64)
  z = np.exp(z - z.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def test_softmax_then_top_k_matches_numpy():
  logits = _logits()
  out = route(RouterConfig(num_experts=8, top_k=2), logits)
  probs = _softmax(logits)
  idx = np.argsort(-probs, axis=-1)[:, :2]
  np.testing.assert_array_equal(np.sort(out.routing.expert_index, -1), np.sort(idx, -1))
  want = np.take_along_axis(probs, np.asarray(out.routing.expert_index), -1)
  np.testing.assert_allclose(out.routing.weight, want, rtol=1e-5)
  assert bool(out.routing.valid.all())


def test_top_k_then_softmax_is_softmax_over_chosen_logits():
  logits = _logits()
  out = route(RouterConfig(num_experts=8, top_k=3, normalize_top_k=True), logits)
  chosen = np.take_along_axis(np.asarray(logits), np.asarray(out.routing.expert_index), -1)
  np.testing.assert_allclose(out.routing.weight, _softmax(chosen), rtol=1e-5)
  np.testing.assert_allclose(out.routing.weight.sum(-1), 1.0, rtol=1e-6)


def test_sigmoid_renormalised_and_scaled():
  logits = _logits()
  cfg = RouterConfig(num_experts=8, top_k=2, score_fn="sigmoid", normalize_top_k=True,
                     routed_scaling_factor=2.5)
  out = route(cfg, logits)
  np.testing.assert_allclose(out.routing.weight.sum(-1), 2.5, rtol=1e-5)
  sig = 1 / (1 + np.exp(-np.asarray(logits)))
  chosen = np.take_along_axis(sig, np.asarray(out.routing.expert_index), -1)
  np.testing.assert_allclose(out.routing.weight, 2.5 * chosen / chosen.sum(-1, keepdims=True),
                             rtol=1e-5)


def test_group_limited_picks_only_from_best_groups():
  logits = _logits(t=64, e=16, seed=3)
  cfg = RouterConfig(num_experts=16, top_k=4, num_expert_groups=4, top_k_groups=2,
                     score_fn="sigmoid")
  out = route(cfg, logits)
  sig = 1 / (1 + np.exp(-np.asarray(logits)))
  groups = np.sort(sig.reshape(64, 4, 4), -1)[..., -2:].sum(-1)  # top-2 sum per group
  best_groups = np.argsort(-groups, -1)[:, :2]
  chosen_groups = np.asarray(out.routing.expert_index) // 4
  for t in range(64):
    assert set(chosen_groups[t]) <= set(best_groups[t])
    # ...and within them, the best 4 experts.
    allowed = np.concatenate([np.arange(g * 4, g * 4 + 4) for g in best_groups[t]])
    want = allowed[np.argsort(-sig[t, allowed])[:4]]
    assert set(np.asarray(out.routing.expert_index[t])) == set(want)


def test_expert_bias_changes_selection_not_weights():
  logits = _logits()
  cfg = RouterConfig(num_experts=8, top_k=2, score_fn="sigmoid", use_expert_bias=True)
  bias = jnp.zeros(8).at[5].set(10.0)
  out = route(cfg, logits, expert_bias=bias)
  assert bool((out.routing.expert_index == 5).any(-1).all())  # everyone now picks 5
  sig = jax.nn.sigmoid(logits)
  want = jnp.take_along_axis(sig, out.routing.expert_index, -1)
  np.testing.assert_allclose(out.routing.weight, want, rtol=1e-6)  # unbiased scores


def test_capacity_drops_by_position_first_choice_first():
  # 4 tokens all want expert 0 first and expert 1 second; capacity 2.
  idx = jnp.array([[0, 1]] * 4)
  pos, valid = assign_positions(idx, jnp.ones((4, 2), bool), 2, capacity=2)
  np.testing.assert_array_equal(pos[:, 0], [0, 1, 2, 3])
  np.testing.assert_array_equal(valid[:, 0], [True, True, False, False])
  np.testing.assert_array_equal(valid[:, 1], [True, True, False, False])


def test_capacity_second_choices_queue_behind_first_choices():
  idx = jnp.array([[1, 0], [0, 1], [0, 1]])
  pos, valid = assign_positions(idx, jnp.ones((3, 2), bool), 2, capacity=2)
  # Expert 0 gets first choices of tokens 1, 2 (slots 0, 1); token 0's second choice is dropped.
  np.testing.assert_array_equal(pos, [[0, 2], [0, 1], [1, 2]])
  np.testing.assert_array_equal(valid, [[True, False], [True, True], [True, False]])


def test_batch_prioritized_routing_keeps_confident_tokens():
  # All 6 tokens choose expert 0 (top-1); confidence grows with token index.
  logits = jnp.stack([jnp.array([float(t), 0.0, 0.0]) + 1.0 for t in range(6)])
  cfg = RouterConfig(num_experts=3, top_k=1, capacity_factor=1.0, drop_policy="probability")
  out = route(cfg, logits)  # capacity = 2
  np.testing.assert_array_equal(out.routing.valid[:, 0], [0, 0, 0, 0, 1, 1])
  by_pos = route(RouterConfig(num_experts=3, top_k=1, capacity_factor=1.0), logits)
  np.testing.assert_array_equal(by_pos.routing.valid[:, 0], [1, 1, 0, 0, 0, 0])


def test_null_experts_take_no_slot_and_zero_weight():
  logits = jnp.zeros((6, 6)).at[:3, 4].set(5.0).at[:, 0].set(2.0)  # 4, 5 are null
  cfg = RouterConfig(num_experts=4, num_null_experts=2, top_k=2)
  out = route(cfg, logits)
  r = out.routing
  assert not bool(r.valid[:3].all())  # tokens 0-2 chose null expert 4
  assert bool((jnp.where(r.valid, 0, r.weight) == 0).all())
  assert float(out.choice_counts[4]) == 3.0
  assert float(r.tokens_per_expert().sum()) == 9.0  # 12 choices - 3 null


def test_threshold_takes_experts_until_mass_reached():
  probs = np.array([[0.7, 0.2, 0.05, 0.05], [0.3, 0.25, 0.25, 0.2], [0.4, 0.35, 0.15, 0.1]])
  logits = jnp.log(jnp.asarray(probs, jnp.float32))
  out = route(RouterConfig(name="threshold", num_experts=4, top_k=3,
                                options=ThresholdOptions(probability=0.6)), logits)
  # Row 1: 0.3 + 0.25 = 0.55 < 0.6, so a third expert is taken; row 2 stops at 0.75.
  np.testing.assert_array_equal(out.routing.valid.sum(-1), [1, 3, 2])
  np.testing.assert_allclose(out.routing.weight.sum(-1), [0.7, 0.8, 0.75], rtol=1e-5)


def test_expert_choice_gives_every_expert_exactly_capacity_tokens():
  logits = _logits(t=40, e=8, seed=1, scale=3.0)
  cfg = RouterConfig(name="expert_choice", num_experts=8, capacity_factor=2.0)
  out = route(cfg, logits)
  capacity = cfg.capacity(40)
  assert capacity == 10
  np.testing.assert_array_equal(out.routing.tokens_per_expert(), np.full(8, capacity))
  # Each expert's tokens are its top-`capacity` by probability.
  probs = np.asarray(out.probs)
  for e in range(8):
    taken = np.asarray(out.routing.valid[:, e])
    assert probs[taken, e].min() >= probs[~taken, e].max()
  assert set(np.asarray(out.routing.position)[np.asarray(out.routing.valid)].tolist()) \
      == set(range(capacity))


def test_soft_moe_weights_normalised():
  cfg = RouterConfig(name="soft_moe", num_experts=4, top_k=1, options=SoftMoEOptions(num_slots=3))
  out = route(cfg, _logits(t=10, e=12))
  np.testing.assert_allclose(out.routing.dispatch.sum(0), 1.0, rtol=1e-5)  # over tokens
  np.testing.assert_allclose(out.routing.combine.sum((1, 2)), 1.0, rtol=1e-5)  # over slots


def test_sinkhorn_plan_marginals_and_better_balance():
  logits = _logits(t=64, e=4, seed=2) + jnp.array([3.0, 0.0, 0.0, 0.0])  # skewed to 0
  plan = jnp.exp(sinkhorn_log_plan(logits, 50))
  np.testing.assert_allclose(plan.sum(1), 1.0, rtol=1e-4)
  np.testing.assert_allclose(plan.sum(0), 16.0, rtol=1e-2)
  greedy = np.bincount(np.argmax(logits, -1), minlength=4)
  balanced = route(RouterConfig(name="sinkhorn", num_experts=4, top_k=1,
                                options=SinkhornOptions(iterations=50)), logits).routing.tokens_per_expert()
  assert greedy.max() > 40 and float(balanced.max()) < 26  # 64 tokens / 4 experts = 16


def test_hash_router_is_fixed_and_spreads():
  ids = jnp.arange(4000)
  cfg = RouterConfig(name="hash", num_experts=8, top_k=1)
  a = route(cfg, None, token_ids=ids).routing.expert_index[:, 0]
  np.testing.assert_array_equal(a, hash_expert(ids, 8))
  np.testing.assert_array_equal(route(cfg, None, token_ids=ids[::-1]).routing.expert_index[:, 0],
                                a[::-1])  # depends on the id only
  counts = np.bincount(np.asarray(a), minlength=8)
  assert counts.min() > 400 and counts.max() < 600
  with pytest.raises(ValueError, match="token_ids"):
    route(cfg, None)


def test_noise_and_second_expert_sampling_are_seeded():
  logits = _logits(t=64)
  cfg = RouterConfig(num_experts=8, top_k=2, second_expert_sampling=True)
  a = route(cfg, logits, rng=jax.random.key(0)).routing
  b = route(cfg, logits, rng=jax.random.key(0)).routing
  c = route(cfg, logits, rng=jax.random.key(1)).routing
  np.testing.assert_array_equal(a.valid, b.valid)
  assert not np.array_equal(a.valid, c.valid)
  assert bool(a.valid[:, 0].all()) and not bool(a.valid[:, 1].all())
  # Deterministic (no rng): the second expert is always kept.
  assert bool(route(cfg, logits).routing.valid.all())
  noisy = RouterConfig(num_experts=8, top_k=2, noisy_top_k=True)
  std = jnp.full(logits.shape, 5.0)
  n1 = route(noisy, logits, noise_std=std, rng=jax.random.key(0)).routing.expert_index
  n0 = route(noisy, logits, noise_std=std).routing.expert_index
  assert not np.array_equal(n1, n0)
