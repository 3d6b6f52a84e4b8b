"""The whole expert FFN per row block, in plain XLA: y = act(x W_in[g]) W_out[g].

The unfused path runs two blocked grouped matmuls with the activation between
them, so the [rows, d_ff] hidden activation is written to memory, read by the
activation, written again and read back by the second matmul (and more passes
backward). Here one loop over (group, block) tiles takes a block of b rows
from x to y while its [b, d_ff] hidden block stays in cache; it keeps only the
pre-activations for the backward pass, which is one loop too (per block: the
activation and its VJP, both weight gradients and d_x). Recomputing the
pre-activations instead of keeping them would save that memory but was ~3%
slower on CPU at the benchmark's default shape.

Tiles and masks are the blocked grouped matmul's (blocked.py); rows past
sum(group_sizes) come out zero. No library fuses a grouped FFN on XLA:CPU
(tokamax's ragged dot fuses an activation into one matmul, on GPU/TPU).
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from moejax.grouped_matmul.blocked import (acc_dtype, for_group_blocks, pad_rows,
                                           block_schedule)
from moejax.grouped_matmul.quantized import QuantizedWeight


def _hidden(act, xb, w_in, w_gate, b_in, b_gate, acc):
  """(pre-activations, hidden block) of xb [b, d] for one group's weights."""
  dot = lambda a, w: jax.lax.dot_general(a, w, (((1,), (0,)), ((), ())),
                                         preferred_element_type=acc).astype(xb.dtype)
  pre = dot(xb, w_in)
  if b_in is not None:
    pre = pre + b_in.astype(pre.dtype)
  gate = None if w_gate is None else dot(xb, w_gate)
  if b_gate is not None:
    gate = gate + b_gate.astype(gate.dtype)
  return (pre, gate), act(pre, gate)


def take_group(w, g):
  """Group g's slice of w; a QuantizedWeight is dequantized for that group
  alone (the float bank never exists whole)."""
  if w is None:
    return None
  if isinstance(w, QuantizedWeight):
    return w.take_group(g)
  return jax.lax.dynamic_index_in_dim(w, g, keepdims=False)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def blocked_ffn(act: Callable, block_size: int, x: jax.Array, w_in: jax.Array,
                w_gate: Optional[jax.Array], w_out: jax.Array, b_in: Optional[jax.Array],
                b_gate: Optional[jax.Array], b_out: Optional[jax.Array],
                group_sizes: jax.Array) -> jax.Array:
  """Each group's FFN on its rows.

  Args:
    act: (pre [b, f], gate [b, f] or None) -> hidden [b, f]: elementwise.
    block_size: rows per block.
    x: [M, d] rows sorted by group.
    w_in, w_gate (or None), w_out: [G, d, f], [G, d, f], [G, f, d].
    b_in, b_gate, b_out: [G, f], [G, f], [G, d] or None (b_gate only with w_gate).
    group_sizes: [G] int32, summing to at most M.
  Returns:
    [M, d] in x's dtype; rows past sum(group_sizes) are zero.
  """
  return _forward(act, block_size, x, w_in, w_gate, w_out, b_in, b_gate, b_out,
                  group_sizes)[0]


def blocked_ffn_forward(act: Callable, block_size: int, x: jax.Array, w_in, w_gate, w_out,
                        b_in, b_gate, b_out, group_sizes: jax.Array) -> jax.Array:
  """blocked_ffn's forward pass alone, for weights it need not differentiate:
  w_in, w_gate, w_out may be QuantizedWeight banks, dequantized one group at
  a time inside the loop. Same arguments and result as blocked_ffn."""
  return _forward(act, block_size, x, w_in, w_gate, w_out, b_in, b_gate, b_out,
                  group_sizes)[0]


def _forward(act, block_size, x, w_in, w_gate, w_out, b_in, b_gate, b_out, group_sizes,
             keep_pre=False):
  """y [M, d], and with keep_pre the pre-activations ([P, f] each, P = M
  rounded up to whole blocks) that the backward pass reads."""
  b, padded, tiles = block_schedule(group_sizes, x.shape[0], block_size)
  xp = pad_rows(x, padded)
  acc = acc_dtype(x.dtype)
  put = lambda buf, row0, keep, block: jax.lax.dynamic_update_slice_in_dim(
      buf, jnp.where(keep, block, jax.lax.dynamic_slice_in_dim(buf, row0, b)), row0, 0)

  def group(g, carry):
    wi, wg, wo = take_group(w_in, g), take_group(w_gate, g), take_group(w_out, g)
    bi, bg, bo = take_group(b_in, g), take_group(b_gate, g), take_group(b_out, g)

    def block(row0, keep, carry):
      out, pres = carry
      xb = jax.lax.dynamic_slice_in_dim(xp, row0, b)
      pre, hb = _hidden(act, xb, wi, wg, bi, bg, acc)
      yb = jax.lax.dot_general(hb, wo.astype(hb.dtype), (((1,), (0,)), ((), ())),
                               preferred_element_type=acc).astype(x.dtype)
      if bo is not None:
        yb = yb + bo.astype(yb.dtype)
      if keep_pre:
        pres = tuple(None if buf is None else put(buf, row0, keep, p)
                     for buf, p in zip(pres, pre))
      return put(out, row0, keep, yb), pres

    return for_group_blocks(tiles, g, b, block, carry)

  f = w_in.shape[2]
  pres = (jnp.zeros((padded, f), x.dtype) if keep_pre else None,
          jnp.zeros((padded, f), x.dtype) if keep_pre and w_gate is not None else None)
  out = jnp.zeros((padded, w_out.shape[2]), x.dtype)
  out, pres = jax.lax.fori_loop(0, w_in.shape[0], group, (out, pres))
  return out[:x.shape[0]], pres


def _fwd(act, block_size, x, w_in, w_gate, w_out, b_in, b_gate, b_out, group_sizes):
  y, pres = _forward(act, block_size, x, w_in, w_gate, w_out, b_in, b_gate, b_out,
                     group_sizes, True)
  return y, (x, w_in, w_gate, w_out, b_in, b_gate, b_out, group_sizes, pres)


def tdot(a, c, acc):
  """aᵀ c: [b, m]ᵀ [b, n] -> [m, n], accumulated in acc."""
  return jax.lax.dot_general(a, c, (((0,), (0,)), ((), ())), preferred_element_type=acc)


def ndot(a, w, acc):
  """a wᵀ: [b, n] [m, n]ᵀ -> [b, m] in a's dtype, accumulated in acc."""
  return jax.lax.dot_general(a, w.astype(a.dtype), (((1,), (1,)), ((), ())),
                             preferred_element_type=acc).astype(a.dtype)


def input_projection_grads(xb, d_pre, d_gate, w_in, w_gate, grads, acc):
  """The backward of a block's input projections pre = xb W_in (+ b_in),
  gate = xb W_gate (+ b_gate): (d_xb, and grads = (d_w_in, d_w_gate, d_b_in,
  d_b_gate) with this block added; None entries stay None)."""
  d_wi, d_wg, d_bi, d_bg = grads
  d_wi = d_wi + tdot(xb, d_pre, acc)
  dxb = ndot(d_pre, w_in, acc)
  if w_gate is not None:
    d_wg = d_wg + tdot(xb, d_gate, acc)
    dxb = dxb + ndot(d_gate, w_gate, acc)
  if d_bi is not None:
    d_bi = d_bi + jnp.sum(d_pre, 0, dtype=acc)
  if d_bg is not None:
    d_bg = d_bg + jnp.sum(d_gate, 0, dtype=acc)
  return dxb, d_wi, d_wg, d_bi, d_bg


def _bwd(act, block_size, residual, dy):
  x, w_in, w_gate, w_out, b_in, b_gate, b_out, group_sizes, (pre_all, gate_all) = residual
  weights = (w_in, w_gate, w_out, b_in, b_gate, b_out)
  b, padded, tiles = block_schedule(group_sizes, x.shape[0], block_size)
  xp, dyp = pad_rows(x, padded), pad_rows(dy, padded)
  acc = acc_dtype(x.dtype)
  zeros = lambda w: None if w is None else jnp.zeros(w.shape[1:], acc)

  def group(g, carry):
    dx, grads = carry
    wi, wg, wo = take_group(w_in, g), take_group(w_gate, g), take_group(w_out, g)

    def block(row0, keep, inner):
      dx, (d_wi, d_wg, d_wo, d_bi, d_bg, d_bo) = inner
      xb = jax.lax.dynamic_slice_in_dim(xp, row0, b)
      # Rows of other groups get a zero cotangent: nothing of theirs flows below.
      dyb = jnp.where(keep, jax.lax.dynamic_slice_in_dim(dyp, row0, b), 0)
      pre = jax.lax.dynamic_slice_in_dim(pre_all, row0, b)
      gate = None if gate_all is None else jax.lax.dynamic_slice_in_dim(gate_all, row0, b)
      hb, act_vjp = jax.vjp(act, pre, gate)
      d_wo = d_wo + tdot(hb, dyb, acc)
      d_pre, d_gate = act_vjp(ndot(dyb, wo, acc))
      dxb, d_wi, d_wg, d_bi, d_bg = input_projection_grads(
          xb, d_pre, d_gate, wi, wg, (d_wi, d_wg, d_bi, d_bg), acc)
      if d_bo is not None:
        d_bo = d_bo + jnp.sum(dyb, 0, dtype=acc)
      current = jax.lax.dynamic_slice_in_dim(dx, row0, b)
      dx = jax.lax.dynamic_update_slice_in_dim(dx, jnp.where(keep, dxb, current), row0, 0)
      return dx, (d_wi, d_wg, d_wo, d_bi, d_bg, d_bo)

    group_grads = tuple(zeros(w) for w in weights)
    dx, group_grads = for_group_blocks(tiles, g, b, block, (dx, group_grads))
    grads = jax.tree.map(lambda all_g, one: jax.lax.dynamic_update_index_in_dim(all_g, one, g, 0),
                         grads, group_grads)
    return dx, grads

  grads = tuple(None if w is None else jnp.zeros(w.shape, acc) for w in weights)
  dx, grads = jax.lax.fori_loop(0, w_in.shape[0], group, (jnp.zeros((padded, x.shape[1]), x.dtype),
                                                         grads))
  cast = tuple(None if g is None else g.astype(w.dtype)
               for g, w in zip(grads, weights))
  return (dx[:x.shape[0]],) + cast + (None,)


blocked_ffn.defvjp(_fwd, _bwd)
