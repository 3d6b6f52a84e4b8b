"""Vision Transformer classifier with MoE blocks (V-MoE)."""

from __future__ import annotations

from typing import Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from moejax.moe import MoEAux
from moejax.models.attention import block_norm
from moejax.models.blocks import run_blocks
from moejax.models.config import ModelConfig


class ViT(nn.Module):
  """images: [B, S, S, C] float -> (logits [B, num_classes] float32, {block: MoEAux}).

  Non-overlapping patch_size patches, linear patch embedding, learned position
  embeddings, bidirectional blocks, mean pooling or a cls token.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, images: jax.Array, *,
               deterministic: bool = True) -> Tuple[jax.Array, Dict[str, MoEAux]]:
    cfg = self.config
    expected = (cfg.vit.image_size, cfg.vit.image_size, cfg.vit.num_channels)
    if images.shape[1:] != expected:
      raise ValueError(f"images have shape {images.shape}; model expects [batch, *{expected}]")
    x = nn.Conv(cfg.d_model, (cfg.vit.patch_size,) * 2, strides=(cfg.vit.patch_size,) * 2,
                padding="VALID", name="patch_embed")(images.astype(jnp.float32))
    x = x.reshape(x.shape[0], -1, cfg.d_model)                               # [B, P, d]
    if cfg.vit.pool == "cls":
      cls = self.param("cls", nn.initializers.zeros, (1, 1, cfg.d_model))
      x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, cfg.d_model)), x], axis=1)
    pos = self.param("position_embed", nn.initializers.normal(0.02), (1,) + x.shape[1:])
    x = (x + pos).astype(jnp.dtype(cfg.dtype))
    x, aux = run_blocks(cfg, x, causal=False, deterministic=deterministic)
    x = block_norm(cfg, "final_norm")(x)
    pooled = x[:, 0] if cfg.vit.pool == "cls" else x.mean(axis=1)
    logits = nn.Dense(cfg.vit.num_classes, name="head")(pooled.astype(jnp.float32))
    return logits, aux
