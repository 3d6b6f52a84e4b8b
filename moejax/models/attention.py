"""Self-attention for the Transformer blocks: RoPE, grouped-query attention
(with optional q/k norms and biases), DeepSeek's multi-head latent attention,
SwitchHead's expert value / output projections (switchhead.py), and a
key/value cache for autoregressive decoding.

Decoding: call with `decode=True` and the 'cache' collection mutable. Each
layer keeps `cache/{cached_key, cached_value}: [B, max_len, kv heads, head width]` and
`cache/index` (tokens written so far); a call with T new tokens writes them at
`index`, gives them positions index .. index + T - 1 and attends to every
cached key up to its own position. `moejax.generate.init_cache` builds the
empty cache.
"""

from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from moejax.models.config import LMConfig, ModelConfig
from moejax.models.switchhead import RoutedProjection

# DeepSeek-V3 normalises its query / key-value latents with this epsilon
# whatever the model's norm_eps is.
MLA_LATENT_EPS = 1e-6


def rope_frequencies(lm: LMConfig, half: int,
                     positions: Optional[jax.Array] = None) -> jax.Array:
  """[half] RoPE angular frequencies theta^(-i / half), scaled as
  lm.rope_scaling says (the formulas of transformers' rope_type 'linear',
  'llama3', 'yarn', 'longrope' and 'dynamic'). The last two depend on the
  length of the call, max(positions) + 1, as transformers' do."""
  freqs = lm.rope_theta ** (-np.arange(half, dtype=np.float64) / half)
  if lm.rope_scaling in ("longrope", "dynamic"):
    return _length_dependent_frequencies(lm, half, positions)
  if lm.rope_scaling == "linear":
    freqs = freqs / lm.rope_factor
  elif lm.rope_scaling == "llama3":
    wavelength = 2 * np.pi / freqs
    context = lm.rope_original_max_positions
    long_cut, short_cut = context / lm.rope_low_freq_factor, context / lm.rope_high_freq_factor
    # 0 at the long-wavelength cut (fully scaled) .. 1 at the short one (kept).
    blend = ((context / wavelength - lm.rope_low_freq_factor)
             / (lm.rope_high_freq_factor - lm.rope_low_freq_factor))
    medium = (1 - blend) * freqs / lm.rope_factor + blend * freqs
    freqs = np.where(wavelength > long_cut, freqs / lm.rope_factor,
                     np.where(wavelength < short_cut, freqs, medium))
  elif lm.rope_scaling == "yarn":
    # Channel pair i turns context * freqs[i] / 2pi times over the original
    # context; solve for the (fractional) pair index that turns `rotations` times.
    def pair_turning(rotations):
      return (half * np.log(lm.rope_original_max_positions / (rotations * 2 * np.pi))
              / np.log(lm.rope_theta))
    low, high = pair_turning(lm.rope_beta_fast), pair_turning(lm.rope_beta_slow)
    if lm.rope_truncate:
      low, high = np.floor(low), np.ceil(high)
    low, high = max(low, 0), min(high, 2 * half - 1)
    high = high + 0.001 if low == high else high
    # 0 for fast pairs (kept as they are) .. 1 for slow ones (interpolated).
    ramp = np.clip((np.arange(half, dtype=np.float32) - low) / (high - low), 0, 1)
    freqs = freqs / lm.rope_factor * ramp + freqs * (1 - ramp)
  return jnp.asarray(freqs, jnp.float32)


def _length_dependent_frequencies(lm: LMConfig, half: int,
                                  positions: Optional[jax.Array]) -> jax.Array:
  """'longrope' and 'dynamic' frequencies for a call reaching max(positions)."""
  length = (jnp.max(positions) + 1) if positions is not None else 0
  exponent = -jnp.arange(half, dtype=jnp.float32) / half
  if lm.rope_scaling == "longrope":
    base = lm.rope_theta ** exponent
    long = base / jnp.asarray(lm.rope_long_factor, jnp.float32)
    short = base / jnp.asarray(lm.rope_short_factor, jnp.float32)
    return jnp.where(length > lm.rope_original_max_positions, long, short)
  # Dynamic NTK: past the unscaled context the base grows with the length.
  context = lm.rope_max_positions
  length = jnp.maximum(length, context).astype(jnp.float32)
  theta = lm.rope_theta * ((lm.rope_factor * length / context) - (lm.rope_factor - 1)) ** (
      2 * half / (2 * half - 2))
  return theta ** exponent


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
  return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope_attention_factor(lm: LMConfig) -> float:
  """What RoPE multiplies rotated queries and keys by ('yarn', 'longrope'; 1
  otherwise)."""
  if lm.rope_scaling not in ("yarn", "longrope"):
    return 1.0
  if lm.rope_attention_factor is not None:
    return lm.rope_attention_factor
  if lm.rope_scaling == "longrope":
    if lm.rope_factor <= 1:
      return 1.0
    return math.sqrt(1 + math.log(lm.rope_factor) / math.log(lm.rope_original_max_positions))
  if lm.rope_mscale and lm.rope_mscale_all_dim:
    return _yarn_mscale(lm.rope_factor, lm.rope_mscale) / _yarn_mscale(
        lm.rope_factor, lm.rope_mscale_all_dim)
  return _yarn_mscale(lm.rope_factor)


def mla_softmax_scale(lm: LMConfig, head_width: int) -> float:
  """MLA's softmax scale: head_width^-1/2, times DeepSeek's yarn mscale^2."""
  scale = head_width ** -0.5
  if lm.rope_scaling != "none" and lm.rope_mscale_all_dim:
    scale *= _yarn_mscale(lm.rope_factor, lm.rope_mscale_all_dim) ** 2
  return scale


def rotary_embedding(x: jax.Array, positions: jax.Array, theta: float,
                     frequencies: Optional[jax.Array] = None, scale: float = 1.0) -> jax.Array:
  """Rotates channel pairs (i, i + H/2) by position-dependent angles (RoPE),
  then multiplies by `scale` (YaRN's attention factor).

  x: [B, T, N, H] with H even; positions: [B, T] (or [T]); frequencies:
  [H/2] (default theta^(-i / (H/2)), unscaled). Computed in float32.
  """
  half = x.shape[-1] // 2
  freqs = (theta ** (-jnp.arange(half, dtype=jnp.float32) / half) if frequencies is None
           else frequencies)                                                 # [H/2]
  angles = positions[..., None].astype(jnp.float32) * freqs                  # [..., T, H/2]
  sin, cos = jnp.sin(angles)[..., None, :], jnp.cos(angles)[..., None, :]   # [..., T, 1, H/2]
  if scale != 1.0:
    sin, cos = sin * scale, cos * scale
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, *, q_positions: jax.Array,
           k_positions: jax.Array, causal: bool, window: int = 0,
           scale: Optional[float] = None, sinks: Optional[jax.Array] = None) -> jax.Array:
  """Softmax attention with grouped-query heads.

  q: [B, T, N, H]; k: [B, S, K, H]; v: [B, S, K, Hv] with K dividing N (query
  head n reads key/value head n // (N / K)); q_positions: [T] or [B, T];
  k_positions: [S] or [B, S]. Keys at negative positions (left padding) are
  hidden. causal: a query sees keys at positions <= its own; window > 0
  also hides keys `window` or more positions back. sinks [N]: one more
  logit per query head in every softmax row, whose probability is dropped.
  Scores and softmax in float32. Returns [B, T, N, Hv].
  """
  b, t, n, h = q.shape
  kv = k.shape[2]
  scale = h ** -0.5 if scale is None else scale
  q = q.reshape(b, t, kv, n // kv, h)
  scores = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32) * scale
  # Rows: 1 when the positions are shared by the batch, else B.
  q_positions = q_positions.reshape(-1, t)
  k_positions = k_positions.reshape(-1, k.shape[1])
  gap = q_positions[:, :, None] - k_positions[:, None, :]                  # [1 or B, T, S]
  seen = jnp.broadcast_to(k_positions[:, None, :] >= 0, gap.shape)
  if causal:
    seen = seen & (gap >= 0)
  if window:
    seen = seen & (gap < window)
  scores = jnp.where(seen[:, None, None], scores, jnp.finfo(jnp.float32).min)
  if sinks is None:
    probs = jax.nn.softmax(scores, axis=-1)
  else:
    sink = jnp.broadcast_to(sinks.astype(jnp.float32).reshape(1, kv, n // kv, 1, 1),
                            (*scores.shape[:-1], 1))
    probs = jax.nn.softmax(jnp.concatenate([scores, sink], axis=-1), axis=-1)[..., :-1]
  probs = probs.astype(v.dtype)
  out = jnp.einsum("bkgts,bskh->btkgh", probs, v)
  return out.reshape(b, t, n, v.shape[-1])


def block_norm(cfg: ModelConfig, name: str) -> nn.Module:
  """The block / final norm chosen by cfg.norm."""
  if cfg.norm in ("layer", "layer_no_bias"):
    return nn.LayerNorm(epsilon=cfg.norm_eps, use_bias=cfg.norm == "layer",
                        use_fast_variance=False, name=name)
  return nn.RMSNorm(epsilon=cfg.norm_eps, name=name)


class Attention(nn.Module):
  """Self-attention. x: [B, T, d_model] -> [B, T, d_model].

  causal: mask future positions (LM). With `positions` ([T] or [B, T]),
  queries and keys get RoPE; with decode=True the positions come from the
  cache. pad_offsets [B]: each row's left padding; its tokens sit at
  positions slot - pad_offset, and the padding (negative positions) is never
  attended to. Multi-/grouped-query attention or MLA by config.attention.

  The decode cache holds, per layer: MHA, keys and values [B, S, K, H];
  MLA, the compressed latent [B, S, kv_rank] and the shared RoPE key
  [B, S, rope_dim], from which keys and values are re-expanded each call.
  """

  config: ModelConfig
  causal: bool
  window: Optional[int] = None  # None: config.attention_window

  @nn.compact
  def __call__(self, x: jax.Array, positions: Optional[jax.Array] = None, *,
               decode: bool = False, pad_offsets: Optional[jax.Array] = None) -> jax.Array:
    cfg = self.config
    if decode:
      index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
      positions = index.value + jnp.arange(x.shape[1])
      if pad_offsets is not None:
        positions = positions[None, :] - pad_offsets[:, None]
    q_positions = jnp.arange(x.shape[1]) if positions is None else positions
    k_positions = q_positions
    if cfg.attention == "mla":
      q, latent, k_rope, scale = self._mla_query_and_latent(x, positions)
      if decode:
        (latent, k_rope), k_positions = self._update_cache(
            index, cached_latent=latent, cached_key_rope=k_rope)
      k, v = self._mla_keys_values(latent, k_rope)
    else:
      q, k, v, scale = self._mha_qkv(x, positions)
      if decode:
        (k, v), k_positions = self._update_cache(index, cached_key=k, cached_value=v)
    if decode and pad_offsets is not None:
      k_positions = k_positions[None, :] - pad_offsets[:, None]
    if cfg.attention_multiplier is not None:
      scale = cfg.attention_multiplier
    window = cfg.attention_window if self.window is None else self.window
    sinks = (self.param("sinks", nn.initializers.zeros, (cfg.num_heads,))
             if cfg.attention_sinks else None)
    out = attend(q, k, v, q_positions=q_positions, k_positions=k_positions,
                 causal=self.causal, window=window, scale=scale, sinks=sinks)
    if cfg.attention_experts:  # SwitchHead: the output mix is chosen per destination token
      b, t, heads, _ = out.shape
      y = self._switchhead("out", x.reshape(b * t, -1), out.reshape(b * t, heads, -1),
                           cfg.d_model)
      return y.sum(axis=1).reshape(b, t, cfg.d_model)
    use_bias = cfg.attention_out_bias
    return nn.DenseGeneral(cfg.d_model, axis=(-2, -1), use_bias=use_bias,
                           dtype=jnp.dtype(cfg.dtype), name="out")(out)

  def _mha_qkv(self, x, positions):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    proj = lambda heads, name: nn.DenseGeneral((heads, cfg.head_size),
                                               use_bias=cfg.attention_bias, dtype=dtype,
                                               name=name)
    q = proj(cfg.num_heads, "query")(x)          # [B, T, N, H]
    k = proj(cfg.kv_heads, "key")(x)             # [B, T, K, H]
    if cfg.attention_experts:  # SwitchHead: each source token's values mix its experts
      b, t, d = x.shape
      tokens = x.reshape(b * t, d)
      per_head = jnp.broadcast_to(tokens[:, None, :], (b * t, cfg.num_heads, d))
      v = self._switchhead("value", tokens, per_head, cfg.head_size).reshape(
          b, t, cfg.num_heads, cfg.head_size)
    else:
      v = proj(cfg.kv_heads, "value")(x)
    if cfg.qk_norm == "head":
      q = nn.RMSNorm(epsilon=cfg.norm_eps, name="query_norm")(q)
      k = nn.RMSNorm(epsilon=cfg.norm_eps, name="key_norm")(k)
    elif cfg.qk_norm == "full":
      flat_norm = lambda a, name: nn.RMSNorm(epsilon=cfg.norm_eps, name=name)(
          a.reshape(*a.shape[:2], -1)).reshape(a.shape)
      q, k = flat_norm(q, "query_norm"), flat_norm(k, "key_norm")
    if cfg.clip_qkv is not None:
      q, k, v = (jnp.clip(a, -cfg.clip_qkv, cfg.clip_qkv) for a in (q, k, v))
    if positions is not None:
      freqs = rope_frequencies(cfg.lm, q.shape[-1] // 2, positions)
      factor = rope_attention_factor(cfg.lm)
      q = rotary_embedding(q, positions, cfg.lm.rope_theta, freqs, factor)
      k = rotary_embedding(k, positions, cfg.lm.rope_theta, freqs, factor)
    return q, k, v, None

  def _switchhead(self, name, router_input, inputs, d_out):
    """RoutedProjection `name`: [rows, d] router input, [rows, heads, d_in]
    inputs -> [rows, heads, d_out]."""
    cfg = self.config
    moe = cfg.moe
    backend, block = (moe.gmm_backend, moe.gmm_block_size) if moe else ("auto", 128)
    return RoutedProjection(cfg.num_heads, cfg.attention_experts, cfg.attention_top_k, d_out,
                            backend, block, jnp.dtype(cfg.dtype), name=name)(router_input,
                                                                            inputs)

  def _mla_query_and_latent(self, x, positions):
    """DeepSeek MLA, up to what the cache holds. Returns queries [B, T, N,
    nope + rope], the normed latent [B, T, kv_rank], the RoPE key shared by
    every head [B, T, rope] and the softmax scale."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    nope, rope = cfg.mla.nope_dim, cfg.mla.rope_dim
    heads = cfg.num_heads
    if cfg.mla.q_rank:
      q = nn.Dense(cfg.mla.q_rank, use_bias=cfg.attention_bias, dtype=dtype, name="q_down")(x)
      q = nn.RMSNorm(epsilon=MLA_LATENT_EPS, name="q_norm")(q)
      q = nn.DenseGeneral((heads, nope + rope), use_bias=False, dtype=dtype, name="q_up")(q)
    else:
      q = nn.DenseGeneral((heads, nope + rope), use_bias=False, dtype=dtype, name="query")(x)
    kv = nn.Dense(cfg.mla.kv_rank + rope, use_bias=cfg.attention_bias, dtype=dtype,
                  name="kv_down")(x)
    latent, k_rope = kv[..., :cfg.mla.kv_rank], kv[..., cfg.mla.kv_rank:]
    # kv_up reads the latent in the model dtype: cache it in that dtype too.
    latent = nn.RMSNorm(epsilon=MLA_LATENT_EPS, name="kv_norm")(latent).astype(dtype)
    q_nope, q_rope = q[..., :nope], q[..., nope:]
    if positions is not None:
      freqs = rope_frequencies(cfg.lm, rope // 2, positions)
      factor = rope_attention_factor(cfg.lm)
      q_rope = rotary_embedding(q_rope, positions, cfg.lm.rope_theta, freqs, factor)
      k_rope = rotary_embedding(k_rope[:, :, None, :], positions, cfg.lm.rope_theta, freqs,
                                factor)[:, :, 0]
    q = jnp.concatenate([q_nope, q_rope], axis=-1)
    return q, latent, k_rope, mla_softmax_scale(cfg.lm, nope + rope)

  def _mla_keys_values(self, latent, k_rope):
    """Per-head keys [B, S, N, nope + rope] and values [B, S, N, v] from the
    latent [B, S, kv_rank] and the shared RoPE key [B, S, rope]."""
    cfg = self.config
    nope, rope = cfg.mla.nope_dim, cfg.mla.rope_dim
    kv = nn.DenseGeneral((cfg.num_heads, nope + cfg.mla.v_dim), use_bias=False,
                         dtype=jnp.dtype(cfg.dtype), name="kv_up")(latent)
    k_nope, v = kv[..., :nope], kv[..., nope:]
    k_rope = jnp.broadcast_to(k_rope[:, :, None, :].astype(k_nope.dtype),
                              (*k_nope.shape[:3], rope))
    return jnp.concatenate([k_nope, k_rope], axis=-1), v

  def _update_cache(self, index, **new):
    """Writes each new array ([B, T, ...]) into its cache variable at slot
    `index`; returns (the whole caches, in argument order, and their slot
    positions [S]). The cache length is fixed when it is created."""
    caches = [self.variable("cache", name, jnp.zeros, value.shape, value.dtype)
              for name, value in new.items()]
    length = next(iter(new.values())).shape[1]
    if self.is_initializing():
      return tuple(new.values()), jnp.arange(length)
    start = index.value
    for cache, value in zip(caches, new.values()):
      cache.value = jax.lax.dynamic_update_slice(
          cache.value, value.astype(cache.value.dtype), (0, start) + (0,) * (value.ndim - 2))
    index.value = start + length
    # Unwritten slots sit at positions past every query, so the causal mask hides them.
    return tuple(c.value for c in caches), jnp.arange(caches[0].value.shape[1])
