"""Row gathers whose backward pass is also a gather.

Dispatch and combine move rows through index maps that are one-to-one (a
slot holds at most one assignment) or one-to-K (a token feeds K slots). The
gradient of `x[idx]` is a scatter-add, which XLA:CPU runs several times
slower than a gather; knowing the reverse map turns it into a gather plus a
small sum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def inverse_slots(slot: jax.Array, num_rows: int) -> jax.Array:
  """[num_rows] assignment in each row; len(slot) (= none) for padding.
  slot: [A] int32 row of each assignment (>= num_rows: none)."""
  fill = jnp.full((num_rows + 1,), slot.shape[0], jnp.int32)
  return fill.at[slot].set(jnp.arange(slot.shape[0], dtype=jnp.int32), mode="drop")[:num_rows]


def _take(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x[idx] along axis 0; out-of-range indices give zero rows."""
  return jnp.take(x, idx, axis=0, mode="fill", fill_value=0)


@jax.custom_vjp
def gather_rows(x: jax.Array, idx: jax.Array, readers: jax.Array) -> jax.Array:
  """out[i] = x[idx[i]] (zeros where idx[i] is out of range).

  Args:
    x: [N, d] source rows.
    idx: [M] int32 source row of each output row.
    readers: [N, J] int32 output rows that read each source row (the inverse
      of idx); out-of-range entries mean "no reader". Used for the gradient:
      dx[n] = sum_j dout[readers[n, j]].
  Returns:
    [M, d].
  """
  del readers
  return _take(x, idx)


def _fwd(x, idx, readers):
  return _take(x, idx), readers


def _bwd(readers, dout):
  dx = _take(dout, readers.reshape(-1)).reshape(readers.shape + dout.shape[1:]).sum(1)
  return dx, None, None


gather_rows.defvjp(_fwd, _bwd)


@jax.custom_vjp
def combine_rows(y: jax.Array, slot: jax.Array, weight: jax.Array,
                 assignment: jax.Array) -> jax.Array:
  """out[t] = sum_k weight[t, k] * y[slot[t, k]]: the gate-weighted combine.

  Args:
    y: [P, d] expert output rows.
    slot: [T, K] int32 row of each assignment; >= P where it has none.
    weight: [T, K] gate weights.
    assignment: [P] int32 flat assignment (t * K + k) in each row, the
      inverse of slot; >= T * K for rows that hold none (padding).
  Returns:
    [T, d] in y's dtype.

  No [T, K, d] tensor is built, forward or backward: on XLA:CPU the cost of
  these moves is mostly writing fresh large buffers. The forward is K
  gathers fused into one sum (~20x faster than gathering [T, K, d] and
  reducing it, at T=4096, K=8, d=512); the backward writes d_y in row order
  (each row's token cotangent times its weight) and d_weight as K fused
  gather-dot products.
  """
  return _weighted_rows(y, slot, weight.astype(y.dtype), dout=None)


# Above this many assignments per token (expert choice has one per expert),
# one [T, K, d] gather replaces the unrolled per-k loop, whose program grows
# with K.
_MAX_UNROLLED_K = 16


def _weighted_rows(y, slot, weight, dout):
  """dout None: sum_k weight[:, k] * y[slot[:, k]] -> [T, d]. Otherwise
  [T, K] float32 dots <y[slot[t, k]], dout[t]>."""
  if slot.shape[1] > _MAX_UNROLLED_K:
    picked = _take(y, slot.reshape(-1)).reshape(*slot.shape, y.shape[-1])
    if dout is None:
      return jnp.sum(picked * weight[..., None], axis=1)
    return jnp.einsum("tkd,td->tk", picked.astype(jnp.float32), dout.astype(jnp.float32))
  cols = []
  for k in range(slot.shape[1]):
    rows = _take(y, slot[:, k])
    if dout is None:
      cols.append(rows * weight[:, k, None])
    else:
      cols.append(jnp.sum(rows.astype(jnp.float32) * dout.astype(jnp.float32), axis=-1))
  return sum(cols) if dout is None else jnp.stack(cols, axis=1)


def _combine_fwd(y, slot, weight, assignment):
  return combine_rows(y, slot, weight, assignment), (y, slot, weight, assignment)


def _combine_bwd(residual, dout):
  y, slot, weight, assignment = residual
  k = slot.shape[1]
  row_dout = _take(dout, assignment // k)                              # [P, d]; 0 for padding
  row_weight = _take(weight.reshape(-1), assignment).astype(y.dtype)   # [P]
  d_weight = _weighted_rows(y, slot, None, dout).astype(weight.dtype)
  return row_dout * row_weight[:, None], None, d_weight, None


combine_rows.defvjp(_combine_fwd, _combine_bwd)
