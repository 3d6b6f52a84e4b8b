"""Qwen3-MoE: per-head q / k RMSNorms, no shared expert."""

from moejax.convert.families.qwen_common import qwen_moe_export, qwen_moe_model
from moejax.convert.families.spec import FamilySpec
from moejax.convert.layout import moe_plan

SPEC = FamilySpec(model_type="qwen3_moe", architecture="Qwen3MoeForCausalLM",
                  to_model=lambda hf: qwen_moe_model(hf, qk_norm="head"),
                  export=qwen_moe_export, moe_plan=moe_plan)
