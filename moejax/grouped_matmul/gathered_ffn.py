"""The expert FFN with dispatch and combine inside its loop: token rows are
read by index, gate-weighted outputs added back by index.

    out[t] = sum over rows r with row_token[r] = t of
             row_weight[r] * FFN_{group(r)}(x[t])

blocked_ffn.py runs the FFN on a grouped copy of the tokens ([P, d], P >=
T·k rows sorted by expert) that dispatch writes, and combine reads its
[P, d] output back; backward, their cotangents and the grouped d_x are
[P, d] too. At fine-grained top-8 those four buffers are most of the
layer's memory (8x the dense activation each). Here the loop over (expert,
row block) tiles gathers each block's b token rows from x, and scatters the
block's weighted outputs into the [T, d] result; the backward gathers the
blocks' output cotangents from d_out and scatters d_x the same way. Only
the pre-activations ([P, d_ff], as blocked_ffn keeps them) are stored.

d_row_weight needs each row's unweighted output y_r = h_r W_out (+ b_out):
<y_r, d_out[t]> = <h_r, d_out[t] W_outᵀ> + <b_out, d_out[t]>, and
d_out[t] W_outᵀ is the product the backward forms anyway, so no output is
stored or recomputed. (ScatterMoE's idea, written here for XLA's loops; no
library provides it for XLA:CPU.)
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from moejax.grouped_matmul.blocked import acc_dtype, block_schedule, for_group_blocks
from moejax.grouped_matmul.blocked_ffn import input_projection_grads, ndot, take_group, tdot


def _rows(a: jax.Array, idx: jax.Array) -> jax.Array:
  """a[idx] along axis 0; out-of-range indices give zero rows."""
  return jnp.take(a, idx, axis=0, mode="fill", fill_value=0)


def _add_rows(buf: jax.Array, idx: jax.Array, rows: jax.Array) -> jax.Array:
  """buf[idx] += rows; out-of-range indices are dropped."""
  return buf.at[idx].add(rows.astype(buf.dtype), mode="drop")


def _dot(a, w, acc, out_dtype):
  return jax.lax.dot_general(a, w, (((1,), (0,)), ((), ())),
                             preferred_element_type=acc).astype(out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def gathered_ffn(act: Callable, block_size: int, x: jax.Array, row_token: jax.Array,
                 row_weight: jax.Array, w_in: jax.Array, w_gate: Optional[jax.Array],
                 w_out: jax.Array, b_in: Optional[jax.Array], b_gate: Optional[jax.Array],
                 b_out: Optional[jax.Array], group_sizes: jax.Array) -> jax.Array:
  """Each expert's FFN on the tokens its rows name, summed back per token.

  Args:
    act: (pre [b, f], gate [b, f] or None) -> hidden [b, f]: elementwise.
    block_size: rows per block (dropless pads each group to a multiple).
    x: [T, d] tokens.
    row_token: [P] int32 token of each grouped row; >= T for padding rows.
    row_weight: [P] gate weight of each row (padding rows: any value).
    w_in, w_gate (or None), w_out: [G, d, f], [G, d, f], [G, f, d].
    b_in, b_gate, b_out: [G, f], [G, f], [G, d] or None.
    group_sizes: [G] int32 rows per group, summing to at most P.
  Returns:
    [T, d] in x's dtype.
  """
  return _forward(act, block_size, x, row_token, row_weight, w_in, w_gate, w_out, b_in,
                  b_gate, b_out, group_sizes)[0]


def _forward(act, block_size, x, row_token, row_weight, w_in, w_gate, w_out, b_in, b_gate,
             b_out, group_sizes, keep_pre=False):
  num_rows = row_token.shape[0]
  b, padded, tiles = block_schedule(group_sizes, num_rows, block_size)
  tokens = jnp.pad(row_token, (0, padded - num_rows), constant_values=x.shape[0])
  weights = jnp.pad(row_weight.astype(x.dtype), (0, padded - num_rows))
  acc = acc_dtype(x.dtype)
  f = w_in.shape[2]

  def group(g, carry):
    wi, wg, wo = take_group(w_in, g), take_group(w_gate, g), take_group(w_out, g)
    bi, bg, bo = take_group(b_in, g), take_group(b_gate, g), take_group(b_out, g)

    def block(row0, keep, carry):
      out, pres = carry
      tok = jax.lax.dynamic_slice_in_dim(tokens, row0, b)
      # Rows of other groups (a straddled block) and padding write nowhere.
      tok = jnp.where(keep[:, 0], tok, x.shape[0])
      xb = _rows(x, tok)
      pre = _dot(xb, wi, acc, x.dtype)
      if bi is not None:
        pre = pre + bi.astype(pre.dtype)
      gate = None if wg is None else _dot(xb, wg, acc, x.dtype)
      if bg is not None:
        gate = gate + bg.astype(gate.dtype)
      yb = _dot(act(pre, gate), wo.astype(x.dtype), acc, x.dtype)
      if bo is not None:
        yb = yb + bo.astype(yb.dtype)
      yb = yb * jax.lax.dynamic_slice_in_dim(weights, row0, b)[:, None]
      if keep_pre:
        put = lambda buf, p: jax.lax.dynamic_update_slice_in_dim(
            buf, jnp.where(keep, p, jax.lax.dynamic_slice_in_dim(buf, row0, b)), row0, 0)
        pres = tuple(None if buf is None else put(buf, p) for buf, p in zip(pres, (pre, gate)))
      return _add_rows(out, tok, yb), pres

    return for_group_blocks(tiles, g, b, block, carry)

  pres = (jnp.zeros((padded, f), x.dtype) if keep_pre else None,
          jnp.zeros((padded, f), x.dtype) if keep_pre and w_gate is not None else None)
  out = jnp.zeros(x.shape, acc)
  out, pres = jax.lax.fori_loop(0, w_in.shape[0], group, (out, pres))
  return out.astype(x.dtype), pres


def _fwd(act, block_size, x, row_token, row_weight, w_in, w_gate, w_out, b_in, b_gate, b_out,
         group_sizes):
  out, pres = _forward(act, block_size, x, row_token, row_weight, w_in, w_gate, w_out, b_in,
                       b_gate, b_out, group_sizes, keep_pre=True)
  return out, (x, row_token, row_weight, w_in, w_gate, w_out, b_in, b_gate, b_out,
               group_sizes, pres)


def _bwd(act, block_size, residual, d_out):
  (x, row_token, row_weight, w_in, w_gate, w_out, b_in, b_gate, b_out, group_sizes,
   (pre_all, gate_all)) = residual
  matrices = (w_in, w_gate, w_out, b_in, b_gate, b_out)
  num_rows = row_token.shape[0]
  b, padded, tiles = block_schedule(group_sizes, num_rows, block_size)
  tokens = jnp.pad(row_token, (0, padded - num_rows), constant_values=x.shape[0])
  weights = jnp.pad(row_weight.astype(x.dtype), (0, padded - num_rows))
  acc = acc_dtype(x.dtype)
  zeros = lambda w: None if w is None else jnp.zeros(w.shape[1:], acc)

  def group(g, carry):
    dx, d_weight, grads = carry
    wi, wg, wo = take_group(w_in, g), take_group(w_gate, g), take_group(w_out, g)
    bo = take_group(b_out, g)

    def block(row0, keep, inner):
      dx, d_weight, (d_wi, d_wg, d_wo, d_bi, d_bg, d_bo) = inner
      tok = jnp.where(keep[:, 0], jax.lax.dynamic_slice_in_dim(tokens, row0, b), x.shape[0])
      wb = jax.lax.dynamic_slice_in_dim(weights, row0, b)[:, None]
      xb, dob = _rows(x, tok), _rows(d_out, tok)            # zero rows where masked
      pre = jax.lax.dynamic_slice_in_dim(pre_all, row0, b)
      gate = None if gate_all is None else jax.lax.dynamic_slice_in_dim(gate_all, row0, b)
      hb, act_vjp = jax.vjp(act, pre, gate)
      u = ndot(dob, wo, acc)                                     # d_out W_outᵀ: [b, f]
      # d row_weight = <h W_out + b_out, d_out[t]>, from the product above.
      dw = jnp.sum(hb.astype(acc) * u.astype(acc), axis=1)
      if bo is not None:
        dw = dw + dob.astype(acc) @ bo.astype(acc)
      d_weight = jax.lax.dynamic_update_slice_in_dim(
          d_weight, jnp.where(keep[:, 0], dw, jax.lax.dynamic_slice_in_dim(d_weight, row0, b)),
          row0, 0)
      dyb = dob * wb
      d_wo = d_wo + tdot(hb, dyb, acc)
      if d_bo is not None:
        d_bo = d_bo + jnp.sum(dyb, 0, dtype=acc)
      d_pre, d_gate = act_vjp(u * wb)
      dxb, d_wi, d_wg, d_bi, d_bg = input_projection_grads(
          xb, d_pre, d_gate, wi, wg, (d_wi, d_wg, d_bi, d_bg), acc)
      return _add_rows(dx, tok, dxb), d_weight, (d_wi, d_wg, d_wo, d_bi, d_bg, d_bo)

    group_grads = tuple(zeros(w) for w in matrices)
    dx, d_weight, group_grads = for_group_blocks(tiles, g, b, block,
                                                 (dx, d_weight, group_grads))
    grads = jax.tree.map(lambda all_g, one: jax.lax.dynamic_update_index_in_dim(all_g, one, g, 0),
                         grads, group_grads)
    return dx, d_weight, grads

  grads = tuple(None if w is None else jnp.zeros(w.shape, acc) for w in matrices)
  dx, d_weight, grads = jax.lax.fori_loop(
      0, w_in.shape[0], group,
      (jnp.zeros(x.shape, acc), jnp.zeros((padded,), acc), grads))
  cast = tuple(None if gr is None else gr.astype(w.dtype) for gr, w in zip(grads, matrices))
  return (dx.astype(x.dtype), None, d_weight[:num_rows].astype(row_weight.dtype)) + cast + (None,)


gathered_ffn.defvjp(_fwd, _bwd)
