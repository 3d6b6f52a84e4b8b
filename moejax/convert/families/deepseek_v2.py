"""DeepSeek-V2: softmax scores, top-k without renormalising (transformers
ignores norm_topk_prob here); 'group_limited_greedy' ranks groups by their
best expert."""

from moejax.convert.families.common import refuse
from moejax.convert.families.deepseek_common import (deepseek_export, deepseek_model,
                                                     deepseek_moe_plan)
from moejax.convert.families.spec import FamilySpec


def to_model(hf: dict):
  method = hf.get("topk_method", "greedy")
  if method not in ("greedy", "group_limited_greedy"):
    refuse(hf, "topk_method", method, "implemented: 'greedy', 'group_limited_greedy'")
  if method == "greedy":
    hf = {**hf, "n_group": 1, "topk_group": 1}
  return deepseek_model(hf, dict(score_fn="softmax", normalize_top_k=False, group_score="max"))


def export(cfg, hf: dict) -> None:
  groups = cfg.moe is not None and cfg.moe.router.num_expert_groups > 1
  deepseek_export(cfg, hf, "group_limited_greedy" if groups else "greedy")


SPEC = FamilySpec(model_type="deepseek_v2", architecture="DeepseekV2ForCausalLM",
                  to_model=to_model, export=export, moe_plan=deepseek_moe_plan)
