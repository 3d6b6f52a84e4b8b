"""dots.llm1 (rednote-hilab): Qwen3's attention (per-head q / k RMSNorms,
grouped-query, windows as layer_types says) with DeepSeek-V3's MoE (sigmoid
scores, selection by scores + e_score_correction_bias, group-limited,
renormalised when norm_topk_prob, times routed_scaling_factor; shared
experts; the first first_k_dense_replace blocks dense)."""

from moejax.convert.families.common import (EXPERT_COUNT_KEYS, backbone, get, get_first,
                                            moe_model)
from moejax.convert.families.deepseek_common import deepseek_export, deepseek_moe_plan
from moejax.convert.families.spec import FamilySpec


def to_model(hf: dict):
  fields = backbone(hf, qk_norm="head", per_layer_windows=True,
                    first_dense_layers=int(hf.get("first_k_dense_replace") or 0))
  router = dict(score_fn="sigmoid", use_expert_bias=True,
                normalize_top_k=bool(hf.get("norm_topk_prob", False)),
                routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
                num_expert_groups=int(hf.get("n_group") or 1),
                top_k_groups=int(hf.get("topk_group") or 1))
  experts = get_first(hf, ("n_routed_experts",) + EXPERT_COUNT_KEYS)
  return moe_model(hf, fields, num_experts=experts,
                   d_ff=get(hf, "moe_intermediate_size"), router=router,
                   num_shared_experts=int(hf.get("n_shared_experts") or 0))


SPEC = FamilySpec(model_type="dots1", architecture="Dots1ForCausalLM", to_model=to_model,
                  export=lambda cfg, hf: deepseek_export(cfg, hf, topk_method=None),
                  moe_plan=lambda cfg, at, ours: deepseek_moe_plan(cfg, at, ours, True))
