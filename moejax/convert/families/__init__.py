"""HuggingFace families: one spec module per config.json model_type
(spec.py says what a spec holds; common.py has what they share)."""

from moejax.convert.families.common import rope_fields, rope_parameters
from moejax.convert.families.spec import (FamilySpec, UnsupportedModelError, family_spec,
                                          family_specs)
from moejax.models.config import ModelConfig

FAMILIES = tuple(family_specs())
MOE_FAMILIES = tuple(name for name, spec in family_specs().items() if spec.moe)
DENSE_FAMILIES = tuple(name for name, spec in family_specs().items() if not spec.moe)


def model_config_from_hf(hf: dict) -> ModelConfig:
  """The moejax ModelConfig that computes what this config.json describes."""
  spec = family_spec(hf.get("model_type"))
  try:
    return spec.to_model(hf)
  except (TypeError, ValueError) as err:
    if isinstance(err, UnsupportedModelError):
      raise
    raise UnsupportedModelError(f"config.json ({spec.model_type}) gives an invalid moejax "
                                f"model: {err}") from None


__all__ = ["DENSE_FAMILIES", "FAMILIES", "FamilySpec", "MOE_FAMILIES", "UnsupportedModelError",
           "family_spec", "family_specs", "model_config_from_hf", "rope_fields",
           "rope_parameters"]
