"""Models built on the MoE layer: a decoder-only LM and a V-MoE ViT."""

import jax
import jax.numpy as jnp

from moejax.models.config import ModelConfig, model_config_from_mapping
from moejax.models.lm import TransformerLM
from moejax.models.vit import ViT


def build_model(config: ModelConfig):
  """The Flax module for `config.kind`."""
  return TransformerLM(config) if config.kind == "lm" else ViT(config)


def abstract_variables(config: ModelConfig, seq_len: int = 8) -> dict:
  """The model's variables ({'params', 'router_state'?}) as shapes and dtypes,
  traced on one example of `seq_len` tokens (or one image): nothing is
  allocated."""
  if config.kind == "lm":
    example = jnp.zeros((1, seq_len), jnp.int32)
  else:
    v = config.vit
    example = jnp.zeros((1, v.image_size, v.image_size, v.num_channels), jnp.float32)
  return jax.eval_shape(build_model(config).init, jax.random.key(0), example)


__all__ = ["ModelConfig", "TransformerLM", "ViT", "abstract_variables", "build_model",
           "model_config_from_mapping"]
