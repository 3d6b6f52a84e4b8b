"""Qwen2 (dense): biases on q, k, v only."""

from moejax.convert.families.common import QKV_BIAS_ONLY, dense_model
from moejax.convert.families.spec import FamilySpec

SPEC = FamilySpec(model_type="qwen2", architecture="Qwen2ForCausalLM",
                  to_model=lambda hf: dense_model(hf, attention_bias=True, **QKV_BIAS_ONLY),
                  moe=False)
