"""Expert pruning (moejax/compress/pruning.py): properties that break if the
indexing were wrong."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.compress import expert_statistics, keep_most_used, prune_experts
from moejax.compress.merging import group_experts, logit_similarity, merge_experts, router_logits
from moejax.config import MoEConfig, RouterConfig
from moejax.models import ModelConfig, build_model


def _model(use_expert_bias=False, name="top_k", **router):
  router = RouterConfig(name=name, num_experts=6, top_k=2, use_expert_bias=use_expert_bias,
                        **router)
  config = ModelConfig(num_layers=2, d_model=32, num_heads=2, dense_d_ff=64, moe_every=1,
                       moe=MoEConfig(router=router, d_model=32, d_ff=16, dispatch="dropless",
                                     activation="swiglu"))
  tokens = jax.random.randint(jax.random.key(1), (4, 16), 0, 256)
  variables = build_model(config).init(jax.random.key(0), tokens)
  return config, dict(variables), tokens


def test_keeping_every_expert_changes_nothing():
  config, variables, tokens = _model(use_expert_bias=True)
  stats = expert_statistics(config, variables, [tokens], "router_weight")
  assert stats.shape == (2, 6)
  new_config, new_variables = prune_experts(config, variables, keep_most_used(stats, 6))
  assert new_config == config
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(new_variables)):
    np.testing.assert_array_equal(a, b)


def test_pruning_an_expert_calibration_never_selects_leaves_outputs_unchanged():
  """Expert 3 of block 0 and expert 5 of block 1 get an expert bias of -1e4,
  so no token selects them; with top-k weights renormalised over the chosen
  experts, pruning them by calibration frequency keeps the logits."""
  config, variables, tokens = _model(use_expert_bias=True, normalize_top_k=True)
  state = jax.tree.map(lambda x: x, variables["router_state"])
  for block, expert in (("block_0", 3), ("block_1", 5)):
    bias = state[block]["moe"]["router"]["expert_bias"]
    state[block]["moe"]["router"]["expert_bias"] = bias.at[expert].set(-1e4)
  variables = dict(variables, router_state=state)
  stats = expert_statistics(config, variables, [tokens, tokens[::-1]], "frequency")
  assert stats[0, 3] == 0 and stats[1, 5] == 0 and stats.sum() == 2 * 2 * 4 * 16 * 2
  keep = keep_most_used(stats, 5)
  assert 3 not in keep[0] and 5 not in keep[1]
  new_config, new_variables = prune_experts(config, variables, keep)
  assert new_config.moe.router.num_experts == 5
  experts = new_variables["params"]["block_1"]["moe"]["experts"]["w_in"]
  np.testing.assert_array_equal(
      experts, variables["params"]["block_1"]["moe"]["experts"]["w_in"][np.array([0, 1, 2, 3, 4])])
  before, _ = build_model(config).apply(variables, tokens)
  after, _ = build_model(new_config).apply(new_variables, tokens)
  np.testing.assert_allclose(after, before, atol=1e-5, rtol=1e-5)


def test_pruning_a_used_expert_changes_outputs_and_keeps_null_columns():
  config, variables, tokens = _model(num_null_experts=2)
  assert variables["params"]["block_0"]["moe"]["router"]["kernel"].shape == (32, 8)
  new_config, new_variables = prune_experts(config, variables, [[0, 2, 4, 5], [1, 2, 3, 4]])
  kernel = variables["params"]["block_0"]["moe"]["router"]["kernel"]
  np.testing.assert_array_equal(new_variables["params"]["block_0"]["moe"]["router"]["kernel"],
                                kernel[:, [0, 2, 4, 5, 6, 7]])
  before, _ = build_model(config).apply(variables, tokens)
  after, _ = build_model(new_config).apply(new_variables, tokens)
  assert float(jnp.abs(after - before).max()) > 1e-3


@pytest.mark.parametrize("keep, message", [
    (np.zeros((2, 0), int), "target=0 experts is invalid: must be between 1 and 6"),
    ([[0, 1], [1, 1]], r"keep=\[1, 1\] is invalid: distinct expert indices in \[0, 6\)"),
    ([[0, 6], [1, 2]], r"keep=\[0, 6\] is invalid"),
    ([[0, 1, 2]], r"keep has shape \(1, 3\): expected \[2 MoE layers, experts\]"),
    ([[0], [1]], "1 experts: router.top_k=2 is invalid"),
])
def test_bad_pruning_requests_are_one_line(keep, message):
  config, variables, _ = _model()
  with pytest.raises(ValueError, match=message) as err:
    prune_experts(config, variables, keep)
  assert "\n" not in str(err.value)


def test_bad_targets_and_routers_are_refused():
  with pytest.raises(ValueError, match="target=7 experts is invalid: must be between 1 and 6"):
    keep_most_used(np.ones((2, 6)), 7)
  config, variables, _ = _model()
  hashed = dataclasses.replace(config, moe=dataclasses.replace(
      config.moe, router=dataclasses.replace(config.moe.router, name="hash", top_k=1)))
  with pytest.raises(ValueError, match="router.name=.hash. cannot be pruned or merged"):
    prune_experts(hashed, variables, [[0], [1]])
  with pytest.raises(ValueError, match="statistic='load' is invalid"):
    expert_statistics(config, variables, [], "load")
  with pytest.raises(ValueError, match="calibration data is empty"):
    expert_statistics(config, variables, [], "frequency")


def _duplicate_expert(variables, source, copy):
  """Expert `copy` of every MoE block made identical to `source`: weights,
  router column."""
  params = jax.tree.map(lambda x: x, variables["params"])
  for block in ("block_0", "block_1"):
    moe = params[block]["moe"]
    moe["experts"] = {k: v.at[copy].set(v[source]) for k, v in moe["experts"].items()}
    kernel = moe["router"]["kernel"]
    moe["router"]["kernel"] = kernel.at[:, copy].set(kernel[:, source])
  return dict(variables, params=params)


def test_merging_identical_experts_is_exact_and_picks_them_first():
  config, variables, tokens = _model(num_null_experts=1)
  variables = _duplicate_expert(variables, source=1, copy=4)
  logits = router_logits(config, variables, [tokens])
  assert [x.shape for x in logits] == [(64, 6), (64, 6)]  # null column dropped
  similarity = logit_similarity(logits)
  np.testing.assert_allclose(similarity[:, 1, 4], 1.0, rtol=1e-6)
  groups = group_experts(similarity, 5)
  assert groups == [[[0], [1, 4], [2], [3], [5]]] * 2
  frequency = expert_statistics(config, variables, [tokens], "frequency")
  new_config, merged = merge_experts(config, variables, groups, frequency)
  assert new_config.moe.router.num_experts == 5
  for block in ("block_0", "block_1"):
    old, new = variables["params"][block]["moe"], merged["params"][block]["moe"]
    for name, value in old["experts"].items():
      np.testing.assert_array_equal(new["experts"][name], np.asarray(value)[[0, 1, 2, 3, 5]])
    kernel = np.asarray(old["router"]["kernel"])
    np.testing.assert_array_equal(new["router"]["kernel"], kernel[:, [0, 1, 2, 3, 5, 6]])


def test_merging_weights_members_by_frequency():
  config, variables, tokens = _model()
  frequency = np.array([[1.0, 3.0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
  groups = [[[0, 1], [2], [3], [4], [5]], [[0], [1], [2], [3, 4], [5]]]
  _, merged = merge_experts(config, variables, groups, frequency)
  w = np.asarray(variables["params"]["block_0"]["moe"]["experts"]["w_in"])
  np.testing.assert_allclose(merged["params"]["block_0"]["moe"]["experts"]["w_in"][0],
                             0.25 * w[0] + 0.75 * w[1], rtol=1e-5, atol=1e-7)
  w = np.asarray(variables["params"]["block_1"]["moe"]["experts"]["w_in"])
  np.testing.assert_allclose(merged["params"]["block_1"]["moe"]["experts"]["w_in"][3],
                             0.5 * w[3] + 0.5 * w[4], rtol=1e-5, atol=1e-7)  # unused: uniform


def test_bad_merge_groups_are_one_line():
  config, variables, _ = _model()
  with pytest.raises(ValueError, match=r"groups=\[\[0, 1\], \[2, 3, 4\]\] of MoE layer 0 are "
                     "invalid: a partition of the 6 experts into 2 groups expected"):
    merge_experts(config, variables, [[[0, 1], [2, 3, 4]]] * 2, np.ones((2, 6)))
  with pytest.raises(ValueError, match="target=0 experts is invalid"):
    group_experts(np.zeros((2, 6, 6)), 0)
