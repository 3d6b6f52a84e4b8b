"""Experts: stacked FFN weights computed on grouped or bucketed inputs.

Weights are stacked over experts — `w_in: [E, d_model, d_ff]`,
`w_out: [E, d_ff, d_model]` (GLU adds `w_gate: [E, d_model, d_ff]`) — and
applied by one batched einsum to capacity buckets or by the grouped matmul
front door to expert-sorted rows. Shared experts and dense baselines are the
same FFN without the expert axis.
"""

from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from moejax.expert_batch import ExpertBatch
from moejax.grouped_matmul import (DEFAULT_BLOCK_SIZE, RowLayout, gmm, group_ids,
                                   resolve_backend, row_layout)
from moejax.grouped_matmul.blocked_ffn import blocked_ffn, blocked_ffn_forward
from moejax.grouped_matmul.gathered_ffn import gathered_ffn
from moejax.grouped_matmul.quantized import QuantizedWeight

# gpt-oss's SwiGLU: the gate is clipped from above and the up projection on
# both sides at this limit, the gate's sigmoid is sharpened by alpha, and the
# up projection is shifted by one (model card values; moejax has no other).
CLAMPED_SWIGLU_LIMIT, CLAMPED_SWIGLU_ALPHA = 7.0, 1.702


def _clamped_swiglu(up: jax.Array, gate: jax.Array) -> jax.Array:
  gate = jnp.minimum(gate, CLAMPED_SWIGLU_LIMIT)
  up = jnp.clip(up, -CLAMPED_SWIGLU_LIMIT, CLAMPED_SWIGLU_LIMIT)
  return (up + 1) * gate * jax.nn.sigmoid(CLAMPED_SWIGLU_ALPHA * gate)


# (up [..., f], gate [..., f]) -> hidden [..., f]
GLU_ACTIVATIONS = {"swiglu": lambda up, gate: jax.nn.silu(gate) * up,
                   "geglu": lambda up, gate: jax.nn.gelu(gate) * up,
                   "clamped_swiglu": _clamped_swiglu}
MLP_ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "silu": jax.nn.silu}


def is_glu(activation: str) -> bool:
  return activation in GLU_ACTIVATIONS


def hidden_activation(activation: str, h_in: jax.Array, h_gate: Optional[jax.Array]):
  """act(h_in) for MLPs; act(h_gate) * h_in for GLUs (clamped_swiglu: see
  _clamped_swiglu)."""
  if is_glu(activation):
    return GLU_ACTIVATIONS[activation](h_in, h_gate)
  return MLP_ACTIVATIONS[activation](h_in)


def quantized_scale_shape(shape, group: int) -> tuple:
  """Scale shape of a quantized [E, K, N] expert matrix: one scale per expert,
  output channel and `group` rows of the contraction axis (0: all K rows)."""
  experts, k, n = shape
  return (experts, k // group if group else 1, n)


def _stacked_init(num_experts_axis: bool):
  batch_axis = (0,) if num_experts_axis else ()
  return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                          in_axis=-2, out_axis=-1, batch_axis=batch_axis)


def expert_ffn(params, batch: ExpertBatch, activation: str,
               gmm_backend: str = "auto",
               gmm_block_size: int = DEFAULT_BLOCK_SIZE) -> ExpertBatch:
  """Applies each expert's FFN to its inputs.

  Args:
    params: dict with w_in [E, d, f], w_out [E, f, d], optional w_gate
      [E, d, f], b_in [E, f], b_gate [E, f], b_out [E, d].
    batch: bucketed [E, C, d] or grouped [M, d] + group_sizes [E].
    activation: one of moejax.config.ACTIVATIONS.
    gmm_backend: backend for the grouped layout (moejax.grouped_matmul).
      Capacity buckets always use one batched einsum: routing equal-size
      buckets through the blocked loops cost 20% per step on lm_tiny.
    gmm_block_size: rows per block of the 'blocked' backend.
  """
  x = batch.x
  quantized = any(isinstance(w, QuantizedWeight) for w in params.values())
  if batch.is_grouped and resolve_backend(gmm_backend) in ("blocked", "gathered"):
    # One loop takes each row block through the whole FFN (blocked_ffn.py):
    # 1.3x faster than two blocked matmuls with the activation between them.
    # Integer weights are dequantized one expert at a time inside the loop
    # (forward only: quantized experts are for inference).
    weight = lambda name: (None if name not in params else params[name]
                           if isinstance(params[name], QuantizedWeight)
                           else params[name].astype(x.dtype))
    ffn = blocked_ffn_forward if quantized else blocked_ffn
    y = ffn(functools.partial(hidden_activation, activation), gmm_block_size, x,
            weight("w_in"), weight("w_gate"), weight("w_out"), weight("b_in"),
            weight("b_gate"), weight("b_out"), batch.group_sizes.astype(jnp.int32))
    return batch.replace_x(y)
  if quantized:   # other layouts and backends take the whole float bank
    params = {name: w.whole() if isinstance(w, QuantizedWeight) else w
              for name, w in params.items()}
  if batch.is_grouped:
    rows_group = group_ids(batch.group_sizes, x.shape[0])
    matmul = lambda a, w: gmm(a, w.astype(a.dtype), batch.group_sizes, gmm_backend,
                              gmm_block_size)
    # Padding rows get bias 0 (index E is out of range: filled with zeros).
    bias = lambda b: jnp.take(b, rows_group, axis=0, mode="fill", fill_value=0)
  else:
    matmul = lambda a, w: jnp.einsum("ecd,edf->ecf", a, w.astype(a.dtype))
    bias = lambda b: b[:, None, :]
  h = matmul(x, params["w_in"])
  if "b_in" in params:
    h = h + bias(params["b_in"]).astype(h.dtype)
  gate = matmul(x, params["w_gate"]) if is_glu(activation) else None
  if "b_gate" in params:
    gate = gate + bias(params["b_gate"]).astype(gate.dtype)
  y = matmul(hidden_activation(activation, h, gate), params["w_out"])
  if "b_out" in params:
    y = y + bias(params["b_out"]).astype(y.dtype)
  return batch.replace_x(y)


# LoRA adapter parameters are named <matrix>_lora_a / <matrix>_lora_b.
LORA_A, LORA_B = "_lora_a", "_lora_b"


def init_lora_a(key: jax.Array, shape) -> jax.Array:
  """A [E, in, r]: random (fan-in scaled); B starts at zero."""
  return _stacked_init(True)(key, shape)


def is_adapter_name(name: str) -> bool:
  return name.endswith((LORA_A, LORA_B))


def merge_adapters(matrices: dict, adapters: dict, scale: float) -> dict:
  """{name: W + scale * A @ B} for W [E or 1, in, out], A [E, in, r], B [E, r,
  out] (a shared base W [1, in, out] broadcasts over the experts)."""
  merged = dict(matrices)
  for name, (a, b) in adapters.items():
    merged[name] = matrices[name] + scale * jnp.einsum("eir,ero->eio", a, b)
  return merged


class ExpertBank(nn.Module):
  """E routed experts with stacked weights (see module docstring).

  `weights()` returns the parameter dict and `pure_fn()` the function that
  applies it, so expert-parallel dispatch can hand the weights to shard_map
  explicitly (a linen module cannot be called inside shard_map).
  """

  num_experts: int
  d_model: int
  d_ff: int
  activation: str = "gelu"
  use_bias: bool = False
  gmm_backend: str = "auto"
  gmm_block_size: int = DEFAULT_BLOCK_SIZE
  dtype: jnp.dtype = jnp.float32
  quantization: Optional[str] = None
  quantization_group: int = 0
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_shared_base: bool = False   # one base matrix [1, in, out] for all experts (MoLoRA)

  @classmethod
  def from_config(cls, cfg, **kwargs) -> "ExpertBank":
    """The routed experts of a moejax.config.MoEConfig."""
    return cls(cfg.router.num_experts, cfg.d_model, cfg.d_ff, cfg.activation, cfg.use_bias,
               gmm_backend=cfg.gmm_backend, gmm_block_size=cfg.gmm_block_size,
               dtype=jnp.dtype(cfg.dtype), quantization=cfg.expert_quantization,
               quantization_group=cfg.expert_quantization_group, lora_rank=cfg.lora_rank,
               lora_alpha=cfg.lora_alpha, lora_shared_base=cfg.lora_shared_base, **kwargs)

  def setup(self):
    e, d, f = self.num_experts, self.d_model, self.d_ff
    shapes = {"w_in": (e, d, f), "w_out": (e, f, d)}
    if is_glu(self.activation):
      shapes["w_gate"] = (e, d, f)
    if self.quantization is None:
      init = _stacked_init(True)
      base = lambda shape: (1, *shape[1:]) if self.lora_shared_base else shape
      self._matrices = {name: self.param(name, init, base(shape))
                        for name, shape in shapes.items()}
    else:
      # Integer values (int4 kept in int8 containers) and float scales, one per
      # output channel and group of contraction rows (compress/quantize.py).
      self._matrices = {name: (self.param(f"{name}_q", nn.initializers.zeros, shape, jnp.int8),
                               self.param(f"{name}_scale", nn.initializers.ones,
                                          quantized_scale_shape(shape, self.quantization_group)))
                        for name, shape in shapes.items()}
    bias_shapes = {"b_in": (e, f), "b_out": (e, d)}
    if is_glu(self.activation):
      bias_shapes["b_gate"] = (e, f)
    self._biases = {name: self.param(name, nn.initializers.zeros, shape)
                    for name, shape in bias_shapes.items()} if self.use_bias else {}
    if self.lora_rank:
      # A random, B zero: the adapted expert starts as the base expert.
      self._adapters = {
          name: (self.param(name + LORA_A, init_lora_a,
                            (e, shape[1], self.lora_rank)),
                 self.param(name + LORA_B, nn.initializers.zeros,
                            (e, self.lora_rank, shape[2])))
          for name, shape in shapes.items()}

  def weights(self, keep_quantized: bool = False) -> dict:
    """{'w_in': [E, d, f], 'w_out': [E, f, d], + 'w_gate', 'b_in', 'b_gate', 'b_out'};
    quantized weights come back dequantized to the compute dtype (as
    QuantizedWeight with keep_quantized, for expert_ffn to dequantize per
    expert), adapters merged (W + lora_alpha / lora_rank * A B, a shared
    base broadcast over the experts: every dispatch and the expert-parallel
    path see plain expert weights)."""
    if self.quantization is None:
      params = dict(self._matrices)
      if self.lora_rank:
        params = merge_adapters(params, self._adapters, self.lora_alpha / self.lora_rank)
    else:
      params = {name: QuantizedWeight(q, scale, self.quantization, jnp.dtype(self.dtype).name)
                for name, (q, scale) in self._matrices.items()}
      if not keep_quantized:
        params = {name: w.whole() for name, w in params.items()}
    return {**params, **self._biases}

  def row_layout(self) -> RowLayout:
    """How a dispatch must group the rows it hands to these experts (block
    alignment and the Pallas permute follow the grouped-matmul backend)."""
    return row_layout(self.gmm_backend, self.gmm_block_size)

  def pure_fn(self):
    """(params, ExpertBatch) -> ExpertBatch, free of the module."""
    activation, backend, block = self.activation, self.gmm_backend, self.gmm_block_size
    dtype = self.dtype

    def apply(params, batch: ExpertBatch) -> ExpertBatch:
      return expert_ffn(params, batch.replace_x(batch.x.astype(dtype)), activation, backend,
                        block)

    def gathered(params, x, row_token, row_weight, group_sizes):
      """(params, x [T, d], row_token [P], row_weight [P], group_sizes [E]) -> [T, d]."""
      x = x.astype(dtype)
      weight = lambda name: params[name].astype(x.dtype) if name in params else None
      return gathered_ffn(functools.partial(hidden_activation, activation), block, x,
                          row_token.astype(jnp.int32), row_weight, weight("w_in"),
                          weight("w_gate"), weight("w_out"), weight("b_in"), weight("b_gate"),
                          weight("b_out"), group_sizes.astype(jnp.int32))

    # Experts that read token rows by index (dropless dispatch asks for it).
    apply.gathered = gathered
    return apply

  def __call__(self, batch: ExpertBatch) -> ExpertBatch:
    return self.pure_fn()(self.weights(keep_quantized=True), batch)

  @property
  def gathered_rows(self):
    """(x [T, d], row_token [P], row_weight [P], group_sizes [E]) -> [T, d]:
    the experts on token rows read by index, their gate-weighted outputs
    summed per token (gmm_backend='gathered'; grouped_matmul/gathered_ffn.py;
    row_token >= T marks a padding row). None for quantized experts, which
    the grouped path dequantizes one expert at a time instead."""
    if self.quantization is not None:
      return None
    return functools.partial(self.pure_fn().gathered, self.weights())


class FeedForward(nn.Module):
  """A dense FFN: shared experts, and the dense baseline. x: [..., d_model]."""

  d_model: int
  d_ff: int
  activation: str = "gelu"
  use_bias: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = lambda n, name: nn.Dense(n, use_bias=self.use_bias, dtype=self.dtype,
                                     kernel_init=_stacked_init(False), name=name)
    h = dense(self.d_ff, "w_in")(x)
    gate = dense(self.d_ff, "w_gate")(x) if is_glu(self.activation) else None
    return dense(self.d_model, "w_out")(hidden_activation(self.activation, h, gate))


class ZeroComputationExperts(nn.Module):
  """MoE++ copy and constant experts (moejax.routing.zero_computation): no
  FFN, never dispatched. Call: (x [T, d], weight [T, copy + constant]) ->
  [T, d] = sum_copy w x + sum_j w_j (a_j1 x + a_j2 v_j), [a_j1, a_j2] =
  softmax(x W_j).

  Params: constant_vectors v [constant, d], constant_gates W [constant, d, 2]
  (zero: each constant expert starts as (x + v_j) / 2).
  """

  num_copy: int
  num_constant: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, weight: jax.Array) -> jax.Array:
    weight = weight.astype(x.dtype)
    y = weight[:, :self.num_copy].sum(-1, keepdims=True) * x
    if self.num_constant:
      shape = (self.num_constant, x.shape[-1])
      vectors = self.param("constant_vectors", nn.initializers.normal(0.02), shape)
      gates = self.param("constant_gates", nn.initializers.zeros, (*shape, 2))
      mix = jax.nn.softmax(jnp.einsum("td,jdc->tjc", x, gates.astype(x.dtype)), axis=-1)
      w = weight[:, self.num_copy:]                                       # [T, constant]
      y = (y + (w * mix[..., 0]).sum(-1, keepdims=True) * x
           + jnp.einsum("tj,jd->td", w * mix[..., 1], vectors.astype(x.dtype)))
    return y
