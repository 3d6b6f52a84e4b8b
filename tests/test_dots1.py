"""dots.llm1 (model_type dots1): a family added as one spec module. Import
matches transformers' logits and router choices; the family's settings reach
the config; export writes a checkpoint transformers loads with the same
logits, in both expert layouts, that imports back to identical variables."""

import numpy as np
import pytest

from hf_models import hf_logits, hf_router_choices, tiny_hf_model
from moejax.convert import load_hf
from test_convert import IDS, _our_logits, _our_router_choices, assert_export_round_trip

# DeepSeek-V3's MoE at tiny size: 8 experts in 4 groups (2 kept), a shared
# expert, the first block dense, renormalised and scaled weights.
DOTS1 = dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=24,
             n_shared_experts=1, first_k_dense_replace=1, n_group=4, topk_group=2,
             norm_topk_prob=True, routed_scaling_factor=2.0, head_dim=16, num_hidden_layers=3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  model = tiny_hf_model("dots1", **DOTS1)
  folder = tmp_path_factory.mktemp("dots1")
  model.save_pretrained(folder)
  return model, str(folder)


def test_import_matches_transformers_logits_and_router_choices(saved):
  torch_model, folder = saved
  model = load_hf(folder)
  ref = hf_logits(torch_model, IDS)
  assert np.abs(ref).max() > 1.0
  np.testing.assert_allclose(_our_logits(model), ref, atol=1e-4, rtol=0)
  ours, theirs = _our_router_choices(model), hf_router_choices(torch_model, IDS)
  assert sorted(ours) == sorted(theirs) == [1, 2]
  for layer in theirs:
    np.testing.assert_array_equal(ours[layer], theirs[layer], err_msg=f"layer {layer}")


def test_family_settings_reach_the_config(saved):
  cfg = load_hf(saved[1]).config
  assert cfg.qk_norm == "head" and cfg.attention == "mha" and cfg.head_size == 16
  assert cfg.first_dense_layers == 1 and cfg.moe.num_shared_experts == 1
  r = cfg.moe.router
  assert (r.score_fn, r.num_expert_groups, r.top_k_groups, r.routed_scaling_factor,
          r.normalize_top_k, r.use_expert_bias) == ("sigmoid", 4, 2, 2.0, True, True)


@pytest.mark.parametrize("layout", ["per_expert", "fused"])
def test_export_round_trip_through_transformers(saved, layout, tmp_path):
  assert_export_round_trip(*saved, "dots1", layout, str(tmp_path / "exported"))
