"""The pre-norm Transformer block shared by the LM and the ViT, whose FFN is
either dense or an MoE layer (attention lives in moejax.models.attention)."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import flax.linen as nn
import jax

from moejax.moe import DenseFFNLayer, MoEAux, moe_layer
from moejax.models.attention import Attention, block_norm, rotary_embedding
from moejax.models.config import ModelConfig

__all__ = ["Attention", "Block", "rotary_embedding", "run_blocks"]


def _scaled(x: jax.Array, multiplier: float) -> jax.Array:
  return x if multiplier == 1.0 else x * multiplier


class Block(nn.Module):
  """Pre-norm block: x + attn(norm(x)), then x + ffn(norm(x)).

  Returns (x, aux) where aux is the MoE layer's MoEAux, or None for a dense block.
  """

  config: ModelConfig
  use_moe: bool
  causal: bool
  window: Optional[int] = None  # None: config.attention_window

  @nn.compact
  def __call__(self, x: jax.Array, *, positions: Optional[jax.Array] = None,
               token_ids: Optional[jax.Array] = None, deterministic: bool = True,
               decode: bool = False,
               prev_router_logits: Optional[jax.Array] = None,
               pad_offsets: Optional[jax.Array] = None
               ) -> Tuple[jax.Array, Optional[MoEAux]]:
    cfg = self.config
    attended = Attention(cfg, self.causal, self.window, name="attention")(
        block_norm(cfg, "attention_norm")(x), positions, decode=decode, pad_offsets=pad_offsets)
    x = x + _scaled(attended, cfg.residual_multiplier)
    h = block_norm(cfg, "ffn_norm")(x)
    if self.use_moe:
      y, aux = moe_layer(cfg.moe, name="moe")(h, token_ids=token_ids,
                                               deterministic=deterministic,
                                               prev_router_logits=prev_router_logits)
    else:
      y, _ = DenseFFNLayer(cfg.d_model, cfg.dense_d_ff, cfg.activation, dtype=cfg.dtype,
                           name="ffn")(h)
      aux = None
    return x + _scaled(y.astype(x.dtype), cfg.residual_multiplier), aux


def run_blocks(config: ModelConfig, x: jax.Array, *, causal: bool,
               positions: Optional[jax.Array] = None, token_ids: Optional[jax.Array] = None,
               deterministic: bool = True, decode: bool = False,
               pad_offsets: Optional[jax.Array] = None) -> Tuple[jax.Array, Dict[str, MoEAux]]:
  """Applies config.num_layers blocks (call inside a compact module).

  Returns the final hidden states and {'block_<i>': MoEAux} for MoE blocks.
  decode: attend through each block's key/value cache; pad_offsets [B]: left
  padding per row (see moejax.models.attention.Attention).
  """
  aux = {}
  router_logits = None  # the last MoE layer's, for MoE++'s gating residual
  for i in range(config.num_layers):
    x, layer_aux = Block(config, config.is_moe_layer(i), causal, config.window_of(i),
                         name=f"block_{i}")(
        x, positions=positions, token_ids=token_ids, deterministic=deterministic,
        decode=decode, prev_router_logits=router_logits, pad_offsets=pad_offsets)
    if layer_aux is not None:
      aux[f"block_{i}"] = layer_aux
      router_logits = layer_aux.router_logits
  return x, aux
