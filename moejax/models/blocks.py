"""Transformer pieces shared by the LM and the ViT: RoPE, attention, and a
pre-norm block whose FFN is either dense or an MoE layer."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from moejax.moe import DenseFFNLayer, MoEAux, MoELayer
from moejax.models.config import ModelConfig


def rotary_embedding(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotates channel pairs (i, i + H/2) by position-dependent angles (RoPE).

  x: [B, T, N, H] with H even; positions: [B, T] (or [T]). Computed in float32.
  """
  half = x.shape[-1] // 2
  freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)           # [H/2]
  angles = positions[..., None].astype(jnp.float32) * freqs                  # [..., T, H/2]
  sin, cos = jnp.sin(angles)[..., None, :], jnp.cos(angles)[..., None, :]   # [..., T, 1, H/2]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Attention(nn.Module):
  """Multi-head self-attention. x: [B, T, d_model] -> [B, T, d_model].

  causal: mask future positions (LM). With `positions`, queries and keys get RoPE.
  """

  config: ModelConfig
  causal: bool

  @nn.compact
  def __call__(self, x: jax.Array, positions: Optional[jax.Array] = None) -> jax.Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    proj = lambda name: nn.DenseGeneral((cfg.num_heads, cfg.head_dim), use_bias=False,
                                        dtype=dtype, name=name)
    q, k, v = proj("query")(x), proj("key")(x), proj("value")(x)   # [B, T, N, H]
    if positions is not None:
      q = rotary_embedding(q, positions, cfg.rope_theta)
      k = rotary_embedding(k, positions, cfg.rope_theta)
    out = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal)
    return nn.DenseGeneral(cfg.d_model, axis=(-2, -1), use_bias=False, dtype=dtype,
                           name="out")(out)


class Block(nn.Module):
  """Pre-norm block: x + attn(norm(x)), then x + ffn(norm(x)).

  Returns (x, aux) where aux is the MoE layer's MoEAux, or None for a dense block.
  """

  config: ModelConfig
  use_moe: bool
  causal: bool

  @nn.compact
  def __call__(self, x: jax.Array, *, positions: Optional[jax.Array] = None,
               token_ids: Optional[jax.Array] = None,
               deterministic: bool = True) -> Tuple[jax.Array, Optional[MoEAux]]:
    cfg = self.config
    norm = lambda name: nn.RMSNorm(epsilon=cfg.norm_eps, name=name)
    x = x + Attention(cfg, self.causal, name="attention")(norm("attention_norm")(x), positions)
    h = norm("ffn_norm")(x)
    if self.use_moe:
      y, aux = MoELayer(cfg.moe, name="moe")(h, token_ids=token_ids, deterministic=deterministic)
    else:
      y, _ = DenseFFNLayer(cfg.d_model, cfg.dense_d_ff, cfg.activation, dtype=cfg.dtype,
                           name="ffn")(h)
      aux = None
    return x + y.astype(x.dtype), aux


def run_blocks(config: ModelConfig, x: jax.Array, *, causal: bool,
               positions: Optional[jax.Array] = None, token_ids: Optional[jax.Array] = None,
               deterministic: bool = True) -> Tuple[jax.Array, Dict[str, MoEAux]]:
  """Applies config.num_layers blocks (call inside a compact module).

  Returns the final hidden states and {'block_<i>': MoEAux} for MoE blocks.
  """
  aux = {}
  for i in range(config.num_layers):
    x, layer_aux = Block(config, config.is_moe_layer(i), causal, name=f"block_{i}")(
        x, positions=positions, token_ids=token_ids, deterministic=deterministic)
    if layer_aux is not None:
      aux[f"block_{i}"] = layer_aux
  return x, aux
