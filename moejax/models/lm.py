"""Decoder-only Transformer LM with MoE feed-forward blocks."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from moejax.moe import MoEAux
from moejax.models.attention import block_norm
from moejax.models.blocks import run_blocks
from moejax.models.config import ModelConfig


class TransformerLM(nn.Module):
  """tokens: [B, T] int -> (logits [B, T, vocab_size] float32, {block: MoEAux}).

  Pre-norm blocks, RoPE, causal attention; MoE FFN where
  config.is_moe_layer(i). Token ids are passed to the MoE layers (hash routing).
  decode=True (with the 'cache' collection mutable) continues the sequences
  held in the key/value cache; see moejax.generate. pad_offsets [B]: rows
  left-padded by that many tokens; a row's first real token gets position 0
  and its padding is never attended to.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, *, deterministic: bool = True,
               decode: bool = False, pad_offsets: Optional[jax.Array] = None
               ) -> Tuple[jax.Array, Dict[str, MoEAux]]:
    cfg = self.config
    embed = nn.Embed(cfg.lm.vocab_size, cfg.d_model,
                     embedding_init=nn.initializers.normal(stddev=1.0), name="embed")
    x = embed(tokens)
    if cfg.lm.embedding_multiplier != 1.0:
      x = x * cfg.lm.embedding_multiplier
    x = x.astype(jnp.dtype(cfg.dtype))
    positions = jnp.arange(tokens.shape[-1])
    if pad_offsets is not None:
      positions = positions[None, :] - pad_offsets[:, None]            # [B, T]
    x, aux = run_blocks(cfg, x, causal=True, positions=positions, token_ids=tokens,
                        deterministic=deterministic, decode=decode, pad_offsets=pad_offsets)
    x = block_norm(cfg, "final_norm")(x)
    if cfg.lm.tie_embeddings:
      # Scale so tied logits start O(1) with unit-variance embeddings.
      logits = embed.attend(x.astype(jnp.float32)) / jnp.sqrt(cfg.d_model)
    else:
      logits = nn.Dense(cfg.lm.vocab_size, use_bias=cfg.lm.unembed_bias, name="unembed")(
          x.astype(jnp.float32))
    if cfg.lm.logits_scaling != 1.0:
      logits = logits / cfg.lm.logits_scaling
    return logits, aux
