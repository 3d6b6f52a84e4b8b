"""DeepSeek-V3: sigmoid scores, selection by scores + e_score_correction_bias
(aux-loss-free, kept as router_state), group-limited by the sum of each
group's two best, renormalised, times routed_scaling_factor."""

from moejax.convert.families.common import refuse
from moejax.convert.families.deepseek_common import (deepseek_export, deepseek_model,
                                                     deepseek_moe_plan)
from moejax.convert.families.spec import FamilySpec


def to_model(hf: dict):
  if hf.get("topk_method", "noaux_tc") != "noaux_tc":
    refuse(hf, "topk_method", hf["topk_method"], "only 'noaux_tc' is implemented")
  return deepseek_model(hf, dict(score_fn="sigmoid", use_expert_bias=True,
                                 normalize_top_k=bool(hf.get("norm_topk_prob", True))))


SPEC = FamilySpec(model_type="deepseek_v3", architecture="DeepseekV3ForCausalLM",
                  to_model=to_model,
                  moe_plan=lambda cfg, at, ours: deepseek_moe_plan(cfg, at, ours, True),
                  export=lambda cfg, hf: deepseek_export(cfg, hf, "noaux_tc"))
