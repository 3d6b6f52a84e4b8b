"""Validated model configuration: a Transformer backbone shared by the
decoder-only LM and the ViT classifier, with MoE FFNs in some layers.

Like `moejax.config`, every field is checked at construction and a bad value
fails with one ValueError naming the field (prefixed 'model.'), the value and
what is valid.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from moejax.config import ACTIVATIONS, MoEConfig, moe_config_from_mapping
from moejax.validation import check_choice, check_float, check_int, fail, from_mapping

MODEL_KINDS = ("lm", "vit")
POOLS = ("mean", "cls")
NORMS = ("rms", "layer", "layer_no_bias")
QK_NORMS = ("none", "head", "full")
ATTENTIONS = ("mha", "mla")
ROPE_SCALINGS = ("none", "linear", "llama3", "yarn", "longrope", "dynamic")


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """Fields of the decoder-only LM (kind='lm'), set as model.lm.<field>.

  Attributes:
    vocab_size: token vocabulary (256 for the byte-level data).
    rope_theta: RoPE base frequency.
    rope_scaling: 'none', 'linear' (positions divided by rope_factor),
      'llama3' (Llama 3.1: long wavelengths divided by rope_factor, short
      ones kept, a smooth blend between) or 'yarn' (YaRN: channels that turn
      fewer than rope_beta_slow times over the original context are
      interpolated, more than rope_beta_fast kept, a linear ramp between;
      queries and keys scaled by the attention factor), 'longrope' (Phi-3.5:
      per-channel-pair divisors, rope_short_factor while a call's positions
      stay within rope_original_max_positions, rope_long_factor beyond; the
      attention factor) or 'dynamic' (dynamic NTK: past rope_max_positions
      the base grows with the call's length);
      moejax.models.attention.rope_frequencies. Each has a logit parity test
      against transformers.
    rope_factor: the context-extension factor of rope_scaling (>= 1).
    rope_low_freq_factor, rope_high_freq_factor: 'llama3': wavelengths
      above original_max_positions / low are scaled, below
      original_max_positions / high kept.
    rope_original_max_positions: 'llama3', 'yarn', 'longrope': the
      pre-extension context.
    rope_long_factor, rope_short_factor: 'longrope': one divisor per channel
      pair (head width / 2 of them).
    rope_max_positions: 'dynamic': the context up to which RoPE is unscaled.
    rope_beta_fast, rope_beta_slow: 'yarn': the ramp's rotation bounds.
    rope_truncate: 'yarn': round the ramp's ends to whole channels.
    rope_attention_factor: 'yarn', 'longrope': multiplies the rotated queries
      and keys; None = yarn's 0.1 ln(factor) + 1, or with rope_mscale and
      rope_mscale_all_dim both set, the ratio of those two mscales
      (DeepSeek); longrope's sqrt(1 + ln(factor) / ln(original context)).
    rope_mscale, rope_mscale_all_dim: 'yarn' (DeepSeek): mscale(m) =
      0.1 m ln(factor) + 1; MLA's softmax scale is multiplied by
      mscale(rope_mscale_all_dim)^2 when it is set.
    tie_embeddings: the output projection is the transposed embedding,
      scaled by 1/sqrt(d_model).
    unembed_bias: a bias on the untied output projection.
    embedding_multiplier: token embeddings are multiplied by this (Granite).
    logits_scaling: logits are divided by this (Granite).
  """

  vocab_size: int = 256
  rope_theta: float = 10000.0
  rope_scaling: str = "none"
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_positions: int = 8192
  rope_beta_fast: float = 32.0
  rope_beta_slow: float = 1.0
  rope_truncate: bool = True
  rope_attention_factor: Optional[float] = None
  rope_mscale: float = 0.0
  rope_mscale_all_dim: float = 0.0
  rope_long_factor: Tuple[float, ...] = ()
  rope_short_factor: Tuple[float, ...] = ()
  rope_max_positions: int = 0
  tie_embeddings: bool = True
  unembed_bias: bool = False
  embedding_multiplier: float = 1.0
  logits_scaling: float = 1.0

  def __post_init__(self):
    check_int("model.lm.vocab_size", self.vocab_size, 2)
    check_float("model.lm.rope_theta", self.rope_theta, 0.0, False)
    check_choice("model.lm.rope_scaling", self.rope_scaling, ROPE_SCALINGS)
    check_float("model.lm.rope_factor", self.rope_factor, 0.0, False)
    if self.rope_factor < 1:
      fail("model.lm.rope_factor", self.rope_factor, "must be >= 1 (a context extension)")
    check_float("model.lm.rope_low_freq_factor", self.rope_low_freq_factor, 0.0, False)
    check_float("model.lm.rope_high_freq_factor", self.rope_high_freq_factor, 0.0, False)
    if self.rope_scaling == "llama3" and self.rope_high_freq_factor <= self.rope_low_freq_factor:
      fail("model.lm.rope_high_freq_factor", self.rope_high_freq_factor,
           f"must be > rope_low_freq_factor={self.rope_low_freq_factor}")
    check_int("model.lm.rope_original_max_positions", self.rope_original_max_positions, 1)
    check_float("model.lm.rope_beta_fast", self.rope_beta_fast, 0.0, False)
    check_float("model.lm.rope_beta_slow", self.rope_beta_slow, 0.0, False)
    if self.rope_attention_factor is not None:
      check_float("model.lm.rope_attention_factor", self.rope_attention_factor, 0.0, False)
    check_float("model.lm.rope_mscale", self.rope_mscale, 0.0, True)
    check_float("model.lm.rope_mscale_all_dim", self.rope_mscale_all_dim, 0.0, True)
    for name in ("rope_long_factor", "rope_short_factor"):
      values = getattr(self, name)
      if not isinstance(values, (tuple, list)) or not all(
          isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
        fail(f"model.lm.{name}", values, "must be a tuple of positive numbers")
      object.__setattr__(self, name, tuple(float(v) for v in values))  # lists from JSON
    if self.rope_scaling == "longrope" and (
        not self.rope_long_factor or len(self.rope_long_factor) != len(self.rope_short_factor)):
      fail("model.lm.rope_long_factor", self.rope_long_factor, "'longrope' needs long and short "
           "factors of equal length (one per channel pair)")
    check_int("model.lm.rope_max_positions", self.rope_max_positions, 0)
    if self.rope_scaling == "dynamic" and not self.rope_max_positions:
      fail("model.lm.rope_max_positions", 0, "'dynamic' needs the unscaled context (> 0)")
    check_float("model.lm.embedding_multiplier", self.embedding_multiplier, 0.0, False)
    check_float("model.lm.logits_scaling", self.logits_scaling, 0.0, False)


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Fields of the image classifier (kind='vit'), set as model.vit.<field>.

  Attributes:
    image_size, patch_size, num_channels: square input images of
      image_size x image_size x num_channels, cut into patch_size patches.
    num_classes: classifier outputs.
    pool: 'mean' over patch tokens, or a learned 'cls' token.
  """

  image_size: int = 8
  patch_size: int = 2
  num_channels: int = 1
  num_classes: int = 10
  pool: str = "mean"

  def __post_init__(self):
    check_int("model.vit.image_size", self.image_size, 1)
    check_int("model.vit.patch_size", self.patch_size, 1)
    if self.image_size % self.patch_size:
      fail("model.vit.patch_size", self.patch_size, f"must divide image_size={self.image_size}")
    check_int("model.vit.num_channels", self.num_channels, 1)
    check_int("model.vit.num_classes", self.num_classes, 2)
    check_choice("model.vit.pool", self.pool, POOLS)

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class MLAConfig:
  """DeepSeek multi-head latent attention (model.attention='mla'), set as
  model.mla.<field>.

  Attributes:
    q_rank: rank of the query down-projection; 0 = a full-rank query
      projection.
    kv_rank: width of the compressed key/value latent.
    nope_dim: per-head query/key channels without RoPE.
    rope_dim: per-head query/key channels with RoPE (the key part is shared
      by all heads).
    v_dim: per-head value width.
  """

  q_rank: int = 0
  kv_rank: int = 32
  nope_dim: int = 16
  rope_dim: int = 16
  v_dim: int = 16

  def __post_init__(self):
    check_int("model.mla.q_rank", self.q_rank, 0)
    for name in ("kv_rank", "nope_dim", "v_dim"):
      check_int(f"model.mla.{name}", getattr(self, name), 1)
    check_int("model.mla.rope_dim", self.rope_dim, 2)
    if self.rope_dim % 2:
      fail("model.mla.rope_dim", self.rope_dim, "must be even for RoPE")


# The sections of ModelConfig that are dataclasses of their own.
SUB_CONFIGS = {"lm": LMConfig, "vit": ViTConfig, "mla": MLAConfig}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A Transformer with MoE feed-forward blocks.

  Attributes:
    kind: 'lm' (decoder-only causal LM with RoPE) or 'vit' (image classifier,
      V-MoE style: patches + learned position embeddings, bidirectional).
    num_layers: Transformer blocks.
    d_model: residual width.
    num_heads: attention (query) heads.
    num_kv_heads: key/value heads (grouped-query attention; must divide
      num_heads). 0 = num_heads.
    head_dim: width of each head; 0 = d_model // num_heads.
    attention_bias: biases on the query / key / value projections.
    attention_out_bias: a bias on the attention output projection.
    qk_norm: RMSNorm on queries and keys before RoPE: 'none', 'head' (over
      each head's channels; Qwen3-MoE) or 'full' (over all heads together;
      OLMoE).
    attention: 'mha' (multi-/grouped-query attention) or 'mla' (DeepSeek
      multi-head latent attention: low-rank queries and a compressed
      key/value latent, shaped by `mla`; num_kv_heads and head_dim unused).
    attention_window: a causal query sees only the last `attention_window`
      keys (sliding-window attention, Mistral-style); 0 = all of them.
    full_attention_layers: blocks (0-based indices) that see all keys
      whatever attention_window says (gpt-oss alternates windowed and full
      layers); needs attention_window > 0.
    attention_sinks: a learned logit per query head that joins every
      softmax row as one more key without a value (gpt-oss): the share of
      attention it takes is dropped, so a head may attend to nothing.
    clip_qkv: queries, keys and values are clipped to [-clip_qkv, clip_qkv]
      after their projections (and qk_norm), before RoPE (DBRX, OLMoE);
      None = no clipping. attention='mha' only.
    attention_experts: SwitchHead (moejax/models/switchhead.py): each head's
      value and output projections become this many linear experts, of
      which each token uses attention_top_k (sigmoid gates); 0 = dense
      projections. attention='mha' without GQA or projection biases.
    attention_top_k: experts per head and token for attention_experts.
    attention_multiplier: the softmax scale of attention scores; None =
      1/sqrt(query-key width) (Granite sets it).
    residual_multiplier: each block adds this times its attention and FFN
      outputs to the residual stream (Granite); 1 = plain residuals.
    dense_d_ff: hidden width of the FFN in dense (non-MoE) blocks.
    activation: FFN activation of dense blocks ('relu', 'gelu', 'silu',
      'swiglu', 'geglu'); MoE blocks use moe.activation.
    moe_every: every `moe_every`-th block after the first_dense_layers is an
      MoE block: blocks first_dense_layers + moe_every - 1, + 2 * moe_every - 1,
      ... (1 = all of them, 2 = every second one as in GShard / V-MoE).
      0 = no MoE blocks (the dense baseline).
    first_dense_layers: the first N blocks are always dense (DeepSeek-V3).
    dense_layers: further blocks (0-based indices) that are dense whatever
      moe_every says (Qwen-MoE's mlp_only_layers).
    moe: the MoEConfig of MoE blocks (its d_model equals model.d_model).
      None only when moe_every = 0.
    norm: the block / final norms: 'rms' (RMSNorm), 'layer' (LayerNorm
      with a bias; PhiMoE) or 'layer_no_bias' (LayerNorm with a scale only;
      DBRX).
    norm_eps: epsilon of those norms (and of qk_norm).
    dtype: compute dtype of attention and dense FFNs ('float32', 'bfloat16').
      Params are float32; the router computes in float32.
    lm: the LMConfig (vocabulary, RoPE, output projection) of kind='lm'.
    vit: the ViTConfig (image and patch sizes, classes, pooling) of kind='vit'.
    mla: the MLAConfig (latent ranks, head widths) of attention='mla'.
  """

  kind: str = "lm"
  num_layers: int = 4
  d_model: int = 128
  num_heads: int = 4
  num_kv_heads: int = 0
  head_dim: int = 0
  attention_bias: bool = False
  attention_out_bias: bool = False
  qk_norm: str = "none"
  attention: str = "mha"
  attention_window: int = 0
  full_attention_layers: Tuple[int, ...] = ()
  attention_sinks: bool = False
  clip_qkv: Optional[float] = None
  attention_experts: int = 0
  attention_top_k: int = 2
  attention_multiplier: Optional[float] = None
  residual_multiplier: float = 1.0
  dense_d_ff: int = 512
  activation: str = "gelu"
  moe_every: int = 1
  first_dense_layers: int = 0
  dense_layers: Tuple[int, ...] = ()
  moe: Optional[MoEConfig] = None
  norm: str = "rms"
  norm_eps: float = 1e-6
  dtype: str = "float32"
  lm: LMConfig = LMConfig()
  vit: ViTConfig = ViTConfig()
  mla: MLAConfig = MLAConfig()

  def __post_init__(self):
    check_choice("model.kind", self.kind, MODEL_KINDS)
    check_int("model.num_layers", self.num_layers, 1)
    check_int("model.d_model", self.d_model, 1)
    self._check_attention()
    if self.attention_multiplier is not None:
      check_float("model.attention_multiplier", self.attention_multiplier, 0.0, False)
    check_float("model.residual_multiplier", self.residual_multiplier, 0.0, False)
    check_int("model.dense_d_ff", self.dense_d_ff, 1)
    check_choice("model.activation", self.activation, ACTIVATIONS)
    check_int("model.moe_every", self.moe_every, 0)
    check_int("model.first_dense_layers", self.first_dense_layers, 0)
    self._check_layer_indices("dense_layers")
    if self.moe_every:
      if not isinstance(self.moe, MoEConfig):
        fail("model.moe", self.moe, "needs an MoE layer config when moe_every >= 1")
      if self.moe.d_model != self.d_model:
        fail("model.moe.d_model", self.moe.d_model, f"must equal model.d_model={self.d_model}")
      if not any(self.is_moe_layer(i) for i in range(self.num_layers)):
        fail("model.moe_every", self.moe_every,
             f"gives no MoE block among {self.num_layers} layers with "
             f"first_dense_layers={self.first_dense_layers}; use moe_every=0 for a dense model")
    check_choice("model.norm", self.norm, NORMS)
    check_float("model.norm_eps", self.norm_eps, 0.0, False)
    check_choice("model.dtype", self.dtype, ("float32", "bfloat16"))
    for section, cls in SUB_CONFIGS.items():
      if not isinstance(getattr(self, section), cls):
        fail(f"model.{section}", getattr(self, section), f"must be a {cls.__name__}")
    if self.kind == "lm" and self.lm.rope_scaling == "longrope":
      pairs = (self.mla.rope_dim if self.attention == "mla" else self.head_size) // 2
      if len(self.lm.rope_long_factor) != pairs:
        fail("model.lm.rope_long_factor", self.lm.rope_long_factor,
             f"needs {pairs} factors, one per RoPE channel pair")
    if self.kind == "vit" and self.moe is not None and self.moe.router.family.needs_token_ids:
      fail("model.moe.router.name", self.moe.router.name, "routes by token id, which images "
           "do not have; use it with kind='lm'")

  def _check_attention(self):
    check_int("model.num_heads", self.num_heads, 1)
    check_choice("model.attention", self.attention, ATTENTIONS)
    check_choice("model.qk_norm", self.qk_norm, QK_NORMS)
    check_int("model.attention_window", self.attention_window, 0)
    self._check_layer_indices("full_attention_layers")
    if self.full_attention_layers and not self.attention_window:
      fail("model.full_attention_layers", self.full_attention_layers,
           "only means something with model.attention_window > 0")
    if self.clip_qkv is not None:
      check_float("model.clip_qkv", self.clip_qkv, 0.0, False)
    check_int("model.attention_experts", self.attention_experts, 0)
    check_int("model.attention_top_k", self.attention_top_k, 1)
    if self.attention_experts:
      if self.attention_top_k > self.attention_experts:
        fail("model.attention_top_k", self.attention_top_k,
             f"must be <= attention_experts={self.attention_experts}")
      refusals = (("attention", self.attention, "mha", "SwitchHead experts are for "
                   "attention='mha'"),
                  ("num_kv_heads", self.num_kv_heads, 0, "SwitchHead routes each head's own "
                   "values; leave it 0 (no grouped-query attention)"),
                  ("attention_bias", self.attention_bias, False, "SwitchHead's linear experts "
                   "have no biases; leave it False"),
                  ("attention_out_bias", self.attention_out_bias, False, "SwitchHead's linear "
                   "experts have no biases; leave it False"))
      for field, value, default, why in refusals:
        if value != default and not (field == "num_kv_heads" and value == self.num_heads):
          fail(f"model.{field}", value, f"with model.attention_experts > 0: {why}")
    if self.attention == "mla":
      if self.kind != "lm":
        fail("model.attention", "mla", "is for kind='lm'")
      if self.qk_norm != "none":
        fail("model.qk_norm", self.qk_norm, "attention='mla' normalises its latents; "
             "leave it 'none'")
      if self.clip_qkv is not None:
        fail("model.clip_qkv", self.clip_qkv, "is for attention='mha'; leave it None")
      return
    check_int("model.num_kv_heads", self.num_kv_heads, 0)
    if self.num_kv_heads and self.num_heads % self.num_kv_heads:
      fail("model.num_kv_heads", self.num_kv_heads, f"must divide num_heads={self.num_heads}")
    check_int("model.head_dim", self.head_dim, 0)
    if not self.head_dim and self.d_model % self.num_heads:
      fail("model.num_heads", self.num_heads,
           f"must divide d_model={self.d_model} (or set model.head_dim)")
    if self.kind == "lm" and self.head_size % 2:
      fail("model.head_dim" if self.head_dim else "model.num_heads",
           self.head_dim or self.num_heads,
           f"gives head_dim {self.head_size}; it must be even for RoPE")

  def _check_layer_indices(self, field: str) -> None:
    object.__setattr__(self, field, tuple(getattr(self, field)))  # lists from configs
    for index in getattr(self, field):
      if isinstance(index, bool) or not isinstance(index, int) or not (
          0 <= index < self.num_layers):
        fail(f"model.{field}", getattr(self, field),
             f"must hold block indices in [0, {self.num_layers})")

  def window_of(self, index: int) -> int:
    """Block `index`'s attention window (0 = all keys)."""
    return 0 if index in self.full_attention_layers else self.attention_window

  def is_moe_layer(self, index: int) -> bool:
    """Whether block `index` (0-based) has an MoE FFN."""
    if not self.moe_every or index < self.first_dense_layers or index in self.dense_layers:
      return False
    return (index - self.first_dense_layers) % self.moe_every == self.moe_every - 1

  @property
  def moe_layers(self) -> tuple:
    return tuple(i for i in range(self.num_layers) if self.is_moe_layer(i))

  @property
  def head_size(self) -> int:
    """Channels per attention head (mha)."""
    return self.head_dim or self.d_model // self.num_heads

  @property
  def kv_heads(self) -> int:
    """Key/value heads (mha)."""
    return self.num_kv_heads or self.num_heads

  @property
  def num_patches(self) -> int:
    return self.vit.num_patches


# Flat names that earlier versions used for sub-config fields.
_MOVED_FIELDS = {
    **{name: ("lm", name) for name in ("vocab_size", "rope_theta", "tie_embeddings",
                                       "unembed_bias")},
    **{name: ("vit", name) for name in ("image_size", "patch_size", "num_channels",
                                        "num_classes", "pool")},
    **{f"mla_{name}": ("mla", name) for name in ("q_rank", "kv_rank", "nope_dim", "rope_dim",
                                                 "v_dim")},
}


def model_config_from_mapping(values) -> ModelConfig:
  """ModelConfig from a nested mapping (e.g. ConfigDict.to_dict()).

  'moe' holds MoEConfig fields without d_model (taken from model.d_model) and
  is ignored when moe_every = 0; 'lm', 'vit' and 'mla' hold their sub-config
  fields. Unknown fields fail with one line.
  """
  values = dict(values)
  for old, (section, name) in _MOVED_FIELDS.items():
    if old in values:
      fail(f"model.{old}", values[old], f"moved to model.{section}.{name}; set that instead")
  for section, cls in SUB_CONFIGS.items():
    if isinstance(values.get(section), cls) or section not in values:
      continue
    values[section] = from_mapping(cls, dict(values[section]), f"model.{section}.")
  moe = values.pop("moe", None)
  if values.get("moe_every", ModelConfig.moe_every) and moe is not None:
    moe = dict(moe)
    d_model = values.get("d_model", ModelConfig.d_model)
    check_int("model.d_model", d_model, 1)  # before the MoE config inherits it
    moe.setdefault("d_model", d_model)
    try:
      moe = moe_config_from_mapping(moe)
    except ValueError as err:
      raise ValueError(f"model.moe.{err}") from None
  else:
    moe = None
  return from_mapping(ModelConfig, {**values, "moe": moe}, "model.")
