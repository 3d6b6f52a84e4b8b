"""Mistral (dense): Llama without attention biases, whatever config.json says."""

from moejax.convert.families.common import NO_BIAS, dense_model
from moejax.convert.families.spec import FamilySpec

SPEC = FamilySpec(model_type="mistral", architecture="MistralForCausalLM",
                  to_model=lambda hf: dense_model(hf, **NO_BIAS), moe=False)
