"""Weight-only int8 / int4 quantization of the routed experts, through qwix.

  config, variables = quantize_experts(config, variables, "int4", group=32)

Each expert matrix [E, K, N] (w_in, w_gate: K = d_model; w_out: K = d_ff)
becomes integer values and float scales from qwix.quantize with absmax
calibration: one scale per expert and output channel, or per `group` rows
of the contraction axis too (subchannel scales; int4 wants them). The layer
dequantizes with qwix.dequantize when it runs (moejax/experts.py); routers,
attention, shared experts and biases stay in float.

qwix's own model rewriting (quantize_model) intercepts dot_general /
einsum / ragged_dot calls. moejax's default CPU path is a blocked loop that
slices one expert's matrix per row block under a custom VJP, which that
interception does not reach, so the weights are quantized and dequantized
with qwix's array functions and the rest of the layer is unchanged. The
blocked loop dequantizes one expert's matrices at a time
(moejax/grouped_matmul/quantized.py), so the float bank never exists whole;
other dispatches and backends dequantize the whole bank per call.

int4 values are stored in int8 containers (safetensors has no 4-bit
type); weight_bytes counts them at 4 bits, the size a packed format has.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
import qwix

from moejax.compress.remap import check_remappable, moe_blocks
from moejax.grouped_matmul.quantized import QUANTIZED_TYPES
from moejax.models.config import ModelConfig

BITS = {"int8": 8, "int4": 4}
MATRICES = ("w_in", "w_gate", "w_out")


def quantize_matrix(w, qtype: str, group: int) -> Tuple[np.ndarray, np.ndarray]:
  """(values int8 [E, K, N], scales float32 [E, K / group or 1, N]) of w."""
  tiles = {1: group} if group else None
  q = qwix.quantize(jnp.asarray(w, jnp.float32), QUANTIZED_TYPES[qtype],
                    channelwise_axes=(0, 2), tiled_axes=tiles)
  return np.asarray(q.qvalue.astype(jnp.int8)), np.asarray(q.scale, np.float32)


def quantize_bank(experts: dict, qtype: str, group: int) -> dict:
  """An ExpertBank's params with each matrix (w_in, w_gate, w_out) replaced
  by '<name>_q' values and '<name>_scale' scales; biases unchanged."""
  out = dict(experts)
  for matrix in MATRICES:
    if matrix in out:
      out[f"{matrix}_q"], out[f"{matrix}_scale"] = quantize_matrix(out.pop(matrix), qtype, group)
  return out


def quantize_experts(config: ModelConfig, variables: dict, qtype: str,
                     group: int = 0) -> Tuple[ModelConfig, dict]:
  """(config with moe.expert_quantization=qtype, variables with each expert
  matrix replaced by '<name>_q' values and '<name>_scale' scales)."""
  check_remappable(config)
  if qtype not in QUANTIZED_TYPES:
    raise ValueError(f"qtype={qtype!r} is invalid: valid values are "
                     + ", ".join(repr(q) for q in QUANTIZED_TYPES))
  if config.moe.expert_quantization is not None:
    raise ValueError(f"the experts are already quantized "
                     f"(model.moe.expert_quantization={config.moe.expert_quantization!r})")
  try:
    moe = dataclasses.replace(config.moe, expert_quantization=qtype,
                              expert_quantization_group=group)
  except ValueError as err:
    raise ValueError(f"quantizing to {qtype}: {err}") from None
  params = dict(variables["params"])
  for name in moe_blocks(config):
    block = dict(params[name])
    block["moe"] = {**block["moe"], "experts": quantize_bank(block["moe"]["experts"], qtype,
                                                             group)}
    params[name] = block
  return dataclasses.replace(config, moe=moe), {**variables, "params": params}


def weight_bytes(config: ModelConfig, variables: dict) -> int:
  """Bytes of all parameters, with quantized expert values at their bit width
  (int4: half a byte) and everything else at its stored dtype."""
  bits = BITS.get(config.moe.expert_quantization) if config.moe else None
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables.get("params", {})):
    name = jax.tree_util.keystr(path)
    if bits and name.endswith("_q']"):
      total += leaf.size * bits // 8
    else:
      total += leaf.size * np.dtype(leaf.dtype).itemsize
  return total
