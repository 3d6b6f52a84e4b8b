"""Llama (dense): the backbone every other family starts from."""

from moejax.convert.families.common import dense_model
from moejax.convert.families.spec import FamilySpec

SPEC = FamilySpec(model_type="llama", architecture="LlamaForCausalLM", to_model=dense_model,
                  moe=False)
