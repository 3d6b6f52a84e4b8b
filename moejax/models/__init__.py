"""Models built on the MoE layer: a decoder-only LM and a V-MoE ViT."""

from moejax.models.config import ModelConfig, model_config_from_mapping
from moejax.models.lm import TransformerLM
from moejax.models.vit import ViT


def build_model(config: ModelConfig):
  """The Flax module for `config.kind`."""
  return TransformerLM(config) if config.kind == "lm" else ViT(config)


__all__ = ["ModelConfig", "TransformerLM", "ViT", "build_model", "model_config_from_mapping"]
