"""Qwen2-MoE: biases on q, k, v only (qkv_bias), a gated shared expert."""

from moejax.convert.families.common import QKV_BIAS_ONLY
from moejax.convert.families.qwen_common import qwen_moe_export, qwen_moe_model
from moejax.convert.families.spec import FamilySpec
from moejax.convert.layout import moe_plan


def to_model(hf: dict):
  return qwen_moe_model(hf, attention_bias=bool(hf.get("qkv_bias", True)), **QKV_BIAS_ONLY)


def export(cfg, hf: dict) -> None:
  qwen_moe_export(cfg, hf)
  if cfg.moe is not None:
    hf.update(shared_expert_intermediate_size=cfg.moe.num_shared_experts * (
        cfg.moe.shared_d_ff or cfg.moe.d_ff), qkv_bias=cfg.attention_bias)


SPEC = FamilySpec(model_type="qwen2_moe", architecture="Qwen2MoeForCausalLM", to_model=to_model,
                  export=export, moe_plan=moe_plan)
