"""OLMoE: full-width q / k norms, optional q / k / v clipping, softmax then
top-k (renormalised with norm_topk_prob)."""

from moejax.convert.families.common import EXPERT_COUNT_KEYS, backbone, get, get_first, moe_model
from moejax.convert.families.spec import FamilySpec
from moejax.convert.layout import moe_plan


def to_model(hf: dict):
  clip = hf.get("clip_qkv")
  fields = backbone(hf, qk_norm="full", clip_qkv=None if clip is None else float(clip))
  return moe_model(hf, fields, num_experts=get_first(hf, EXPERT_COUNT_KEYS),
                   d_ff=get(hf, "intermediate_size"),
                   router=dict(normalize_top_k=bool(hf.get("norm_topk_prob", False))))


def export(cfg, hf: dict) -> None:
  if cfg.moe is not None:
    hf.update(num_experts=cfg.moe.router.num_experts, intermediate_size=cfg.moe.d_ff,
              norm_topk_prob=cfg.moe.router.normalize_top_k, clip_qkv=cfg.clip_qkv)


SPEC = FamilySpec(model_type="olmoe", architecture="OlmoeForCausalLM", to_model=to_model,
                  export=export, moe_plan=moe_plan)
