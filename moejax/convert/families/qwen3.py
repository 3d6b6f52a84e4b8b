"""Qwen3 (dense): per-head q / k RMSNorms."""

from moejax.convert.families.common import dense_model
from moejax.convert.families.spec import FamilySpec

SPEC = FamilySpec(model_type="qwen3", architecture="Qwen3ForCausalLM",
                  to_model=lambda hf: dense_model(hf, qk_norm="head"), moe=False)
