"""Integer expert weights that stay integer until a tile needs them.

A QuantizedWeight holds an [E, K, N] bank as integer values and float scales
(qwix's absmax quantization, moejax/compress/quantize.py). `dequantize`
turns a whole bank into floats; `take_group` turns one expert's [K, N] into
floats, which is what the blocked expert loop (blocked_ffn.py) does per
group, so that the float bank never exists whole. qwix's own dequantize does
the arithmetic; this module only decides how much of the bank it sees.
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp
from flax import struct

# Logical integer type of each MoEConfig.expert_quantization (values are
# stored in int8 containers either way).
QUANTIZED_TYPES = {"int8": jnp.int8, "int4": jnp.int4}


def dequantize(q: jax.Array, scale: jax.Array, qtype: str, dtype) -> jax.Array:
  """[E, K, N] float weights of integer values q and their scales (qwix)."""
  import qwix  # here, not at the top: only quantized models need it (0.3 s per process)
  logical = QUANTIZED_TYPES[qtype]
  array = qwix.QArray(qvalue=q.astype(logical), scale=scale.astype(jnp.float32),
                      zero_point=None, qtype=logical)
  return qwix.dequantize(array).astype(dtype)


@struct.dataclass
class QuantizedWeight:
  """q: [E, K, N] int8 containers; scale: [E, K / group or 1, N] float."""
  q: jax.Array
  scale: jax.Array
  qtype: str = struct.field(pytree_node=False)
  dtype: str = struct.field(pytree_node=False)

  @property
  def shape(self) -> Tuple[int, ...]:
    return self.q.shape

  def whole(self) -> jax.Array:
    """The float [E, K, N] bank."""
    return dequantize(self.q, self.scale, self.qtype, self.dtype)

  def take_group(self, g) -> jax.Array:
    """Expert g's float [K, N] (g may be traced)."""
    take = lambda a: jax.lax.dynamic_index_in_dim(a, g, keepdims=True)
    return dequantize(take(self.q), take(self.scale), self.qtype, self.dtype)[0]
