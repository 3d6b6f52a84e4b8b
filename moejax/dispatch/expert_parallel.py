"""Expert parallelism: dispatch strategies that run inside shard_map.

Tokens are split over the mesh's batch axes (data, fsdp, expert) and the
stacked expert weights over `expert` (n_e devices, E/n_e experts each).
Routing happens before, under jit (XLA partitions it); inside shard_map each
device only moves its own tokens:

  capacity ('gather'): local capacity buckets [E, C_loc, d] -> all_to_all over
      `expert` (each device gets the buckets of its E/n_e experts from every
      device: [E/n_e, n_e * C_loc, d]) -> local experts -> all_to_all back ->
      local combine. Needs whole routing groups per device
      (router.routing_groups a multiple of the token shards), so that the
      capacity slots of a device's tokens are its own.
  dropless: local sort by expert -> counts exchanged by all_to_all -> padded
      exchange of rows, where device j gets, from every device, a block of
      T_loc * k rows holding that device's rows for j's experts (a
      destination can never overflow, so nothing is dropped) -> rows regrouped
      by local expert, block-aligned for the blocked grouped matmul -> local
      experts -> the same moves backwards -> local combine. This is the
      'padded' exchange: every device sends n_e fixed blocks, used or not.
      The 'ragged' exchange (jax.lax.ragged_all_to_all, GPU / TPU: XLA:CPU
      does not implement it) sends only the used rows, one slice per
      (device, expert), written straight into the receiver's block-aligned
      expert groups, so it needs no regrouping gather either. 'auto' picks
      ragged on GPU / TPU and padded on CPU (resolve_exchange).

Both give the numbers of the single-device strategies on the same Routing
(tests/multidevice). All moves are gathers with gather VJPs (permute.py) or
all_to_all, whose transpose is itself.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from moejax.config import EP_EXCHANGES
from moejax.dispatch import STRATEGIES, get_strategy
from moejax.dispatch.base import ExpertBatch
from moejax.dispatch.dropless import DroplessDispatch, round_up
from moejax.dispatch.gather import GatherDispatch
from moejax.dispatch.permute import gather_rows, inverse_slots
from moejax.grouped_matmul import RowLayout
from moejax.parallel.mesh import BATCH_AXES, axis_size
from moejax.routing.types import Routing

EXPERT_AXIS = "expert"
# The strategies whose moves run inside shard_map (DispatchStrategy.expert_parallel).
EP_DISPATCHES = tuple(name for name, s in STRATEGIES.items() if s.expert_parallel)


def resolve_exchange(exchange: str, platform: str | None = None) -> str:
  """The concrete exchange 'auto' stands for on `platform` (default: JAX's
  default backend): ragged where XLA implements ragged-all-to-all."""
  if exchange != "auto":
    return exchange
  return "padded" if (platform or jax.default_backend()) == "cpu" else "ragged"


def ragged_all_to_all(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes,
                      *, axis_name):
  """jax.lax.ragged_all_to_all; a module attribute so that CPU tests can swap
  in an emulation of its documented semantics (XLA:CPU lacks the op)."""
  return jax.lax.ragged_all_to_all(operand, output, input_offsets, send_sizes, output_offsets,
                                   recv_sizes, axis_name=axis_name)


def _exchange_buckets(buckets: jax.Array, params, expert_fn: Callable,
                      num_shards: int) -> jax.Array:
  """buckets: [E, C_loc, d] this device's slots for every expert -> same
  shape, the experts' outputs, via the devices that hold the experts."""
  num_experts, slots, d = buckets.shape
  local_experts = num_experts // num_shards
  recv = jax.lax.all_to_all(buckets, EXPERT_AXIS, 0, 0, tiled=True)  # [n_e*E_loc, C, d] by source
  x = recv.reshape(num_shards, local_experts, slots, d).transpose(1, 0, 2, 3)
  y = expert_fn(params, ExpertBatch(x=x.reshape(local_experts, num_shards * slots, d))).x
  y = y.reshape(local_experts, num_shards, slots, -1).transpose(1, 0, 2, 3)
  return jax.lax.all_to_all(y.reshape(num_experts, slots, -1), EXPERT_AXIS, 0, 0, tiled=True)


def _grouped_buffer(recv_counts: jax.Array, rows_per_source: int, block_size: int):
  """Layout of the receiving device's expert groups.

  recv_counts: [n_e src, E_loc] rows each source sends for each local expert.
  Returns (group_sizes [E_loc] padded to block_size, group_start [E_loc],
  before_source [n_e, E_loc] rows of earlier sources in each group, total:
  static rows of a buffer that holds the worst case, every source's
  rows_per_source rows on this device)."""
  num_shards, local_experts = recv_counts.shape
  group_sizes = recv_counts.sum(0)
  total = num_shards * rows_per_source
  if block_size > 1:
    group_sizes = round_up(group_sizes, block_size)
    total = round_up(total, block_size) + local_experts * block_size
  group_start = jnp.cumsum(group_sizes) - group_sizes
  before_source = jnp.cumsum(recv_counts, 0) - recv_counts
  return group_sizes.astype(jnp.int32), group_start, before_source, total


def _exchange_rows_ragged(rows: jax.Array, counts: jax.Array, params, expert_fn: Callable,
                          num_shards: int, block_size: int) -> jax.Array:
  """_exchange_rows_padded's result through ragged_all_to_all. Slice i of
  the send side is expert i's rows (its device is i // E_loc), and each
  lands at its final place in the receiver's grouped buffer (group start +
  rows from earlier sources), so neither side gathers. The way back is the
  same call with the roles swapped."""
  num_rows, d = rows.shape
  local_experts = counts.shape[0] // num_shards
  my_start = (jnp.cumsum(counts) - counts).astype(jnp.int32)           # [E] in rows
  a2a = lambda a: jax.lax.all_to_all(a, EXPERT_AXIS, 0, 0, tiled=True)
  recv_counts = a2a(counts.reshape(num_shards, local_experts))         # [n_e src, E_loc]
  group_sizes, group_start, before_source, total = _grouped_buffer(recv_counts, num_rows,
                                                                   block_size)
  recv_at = (group_start[None] + before_source).astype(jnp.int32)      # [n_e src, E_loc]
  send_at = a2a(recv_at).reshape(-1)                                   # [E] on its device
  recv_counts = recv_counts.reshape(-1).astype(jnp.int32)
  counts = counts.astype(jnp.int32)
  grouped = ragged_all_to_all(rows, jnp.zeros((total, d), rows.dtype), my_start, counts,
                              send_at, recv_counts, axis_name=EXPERT_AXIS)
  out = expert_fn(params, ExpertBatch(x=grouped, group_sizes=group_sizes)).x
  source_start = a2a(my_start.reshape(num_shards, local_experts)).reshape(-1)
  back = jnp.zeros((num_rows, out.shape[1]), out.dtype)
  return ragged_all_to_all(out, back, recv_at.reshape(-1), recv_counts, source_start, counts,
                           axis_name=EXPERT_AXIS)


def _exchange_rows_padded(rows: jax.Array, counts: jax.Array, params, expert_fn: Callable,
                          num_shards: int, block_size: int) -> jax.Array:
  """rows: [R, d] this device's assignments sorted by expert; counts: [E]
  rows per expert. Returns [R, d] the experts' outputs in the same order."""
  num_rows, d = rows.shape
  local_experts = counts.shape[0] // num_shards
  counts = counts.reshape(num_shards, local_experts)
  # Send side: block j of the [n_e * R] send buffer holds the rows for j's experts.
  send_counts = counts.sum(1)                                         # [n_e]
  send_start = jnp.cumsum(send_counts) - send_counts
  i = jnp.arange(num_rows, dtype=jnp.int32)
  send_src = jnp.where(i[None] < send_counts[:, None], send_start[:, None] + i[None],
                       num_rows).reshape(-1)                          # [n_e*R] row read
  dest_shard = jnp.searchsorted(jnp.cumsum(send_counts), i, side="right")
  send_dest = jnp.where(i < send_counts.sum(),
                        dest_shard * num_rows + i - send_start[jnp.minimum(dest_shard,
                                                                           num_shards - 1)],
                        num_shards * num_rows)                        # [R] slot written
  send = gather_rows(rows, send_src, send_dest[:, None])
  recv = jax.lax.all_to_all(send, EXPERT_AXIS, 0, 0, tiled=True)      # [n_e*R, d] by source
  recv_counts = jax.lax.all_to_all(counts, EXPERT_AXIS, 0, 0, tiled=True)  # [n_e src, E_loc]

  # Regroup by local expert: expert e's rows from source 0, then source 1, ...
  group_sizes, group_start, before_source, total = _grouped_buffer(recv_counts, num_rows,
                                                                   block_size)
  expert_end = jnp.cumsum(recv_counts, 1)                              # [n_e, E_loc]
  expert = jax.vmap(lambda ends: jnp.searchsorted(ends, i, side="right"))(expert_end)
  valid = i[None] < expert_end[:, -1:]                                 # [n_e, R]
  expert = jnp.minimum(expert, local_experts - 1)
  take = lambda a: jnp.take_along_axis(a, expert, axis=1)
  rank = i[None] - (take(expert_end) - take(recv_counts))
  dest = group_start[expert] + take(before_source) + rank
  dest = jnp.where(valid, dest, total).reshape(-1).astype(jnp.int32)   # [n_e*R] grouped row
  src = inverse_slots(dest, total)                                          # [total] recv row
  grouped = gather_rows(recv, src, dest[:, None])
  out = expert_fn(params, ExpertBatch(x=grouped, group_sizes=group_sizes)).x
  back = gather_rows(out, dest, src[:, None])                          # [n_e*R, d] by source
  back = jax.lax.all_to_all(back, EXPERT_AXIS, 0, 0, tiled=True)      # [n_e*R, d] by expert shard
  return gather_rows(back, send_dest, send_src[:, None])


class _BoundExperts:
  """expert_fn (ExpertBank.pure_fn()) with its params, called as dispatch
  strategies call experts; keeps its by-index form (gathered_rows) when it
  has one."""

  def __init__(self, expert_fn, params):
    self.expert_fn, self.params = expert_fn, params
    gathered = getattr(expert_fn, "gathered", None)
    self.gathered_rows = None if gathered is None else functools.partial(gathered, params)

  def __call__(self, batch):
    return self.expert_fn(self.params, batch)


def _local_moe(x, routing: Routing, params, expert_fn, dispatch: str, layout: RowLayout,
               num_shards: int, num_token_shards: int, exchange: str) -> jax.Array:
  """One device's part: x [T_loc, d], routing over the same T_loc tokens."""
  apply = _BoundExperts(expert_fn, params)
  if dispatch == "gather":
    # This device holds whole routing groups: its slots are a contiguous
    # 1/num_token_shards of every expert's buffer.
    local_slots = routing.capacity // num_token_shards
    routing = routing.replace(position=routing.position % local_slots, capacity=local_slots)
    strategy = GatherDispatch()
    if num_shards == 1:
      return strategy(x, routing, apply)
    batch, residual = strategy.dispatch(x, routing)
    out = _exchange_buckets(batch.x, params, expert_fn, num_shards)
    return strategy.combine(ExpertBatch(x=out), routing, residual)
  if num_shards == 1:
    return get_strategy("dropless", layout)(x, routing, apply)
  # Rows are sorted by expert without padding here (the exchange pads them to
  # the receiving device's blocks), so the fused Pallas permute does not apply:
  # the layer says so once when it is asked for (MoELayer._expert_parallel_ok).
  strategy = DroplessDispatch(1)
  batch, residual = strategy.dispatch(x, routing)
  exchange_rows = _exchange_rows_ragged if exchange == "ragged" else _exchange_rows_padded
  out = exchange_rows(batch.x, batch.group_sizes, params, expert_fn, num_shards,
                      layout.block_size)
  return strategy.combine(ExpertBatch(x=out, group_sizes=batch.group_sizes), routing, residual)


def token_shards(mesh) -> int:
  """How many distinct token slices a mesh makes (data x fsdp x expert)."""
  return axis_size(mesh, BATCH_AXES)


def expert_parallel(x: jax.Array, routing: Routing, params, expert_fn: Callable, *,
                    dispatch: str, layout: RowLayout, mesh,
                    exchange: str = "auto") -> jax.Array:
  """Dispatch -> experts -> combine with tokens and experts spread over `mesh`.

  Args:
    x: [T, d] tokens (T divisible by the token shards).
    routing: a sparse Routing over the T tokens. For 'gather' its capacity
      slots must come in whole routing groups per device (route_in_groups
      with a multiple of token_shards(mesh) groups).
    params: expert weights stacked over E (E divisible by the expert axis).
    expert_fn: (params, ExpertBatch) -> ExpertBatch, free of Flax.
    dispatch: 'gather' (capacity all_to_all) or 'dropless' (row exchange).
    layout: the row layout the experts' grouped matmul wants (block alignment
      of each expert's rows; the fused Pallas permute on a single expert shard).
    mesh: the (abstract) mesh from jax.set_mesh; axes it lacks count as 1.
    exchange: how 'dropless' moves rows: one of EP_EXCHANGES.
  Returns:
    [T, d] combined outputs, sharded like x.
  """
  if exchange not in EP_EXCHANGES:
    raise ValueError(f"exchange={exchange!r} is invalid: valid values are "
                     + ", ".join(repr(e) for e in EP_EXCHANGES))
  exchange = resolve_exchange(exchange)
  if dispatch not in EP_DISPATCHES:
    raise ValueError(f"dispatch={dispatch!r} has no expert-parallel form; valid: "
                     + ", ".join(repr(d) for d in EP_DISPATCHES))
  num_shards = axis_size(mesh, EXPERT_AXIS)
  shards = token_shards(mesh)
  if routing.num_experts % num_shards:
    raise ValueError(f"router.num_experts={routing.num_experts} is invalid with mesh.expert="
                     f"{num_shards}: use a multiple of {num_shards}")
  if x.shape[0] % shards:
    raise ValueError(f"{x.shape[0]} tokens cannot be split over {shards} token shards "
                     "(data x fsdp x expert)")
  if dispatch == "gather" and (routing.capacity is None or routing.capacity % shards):
    raise ValueError(f"capacity dispatch on {shards} token shards needs router.routing_groups "
                     f"to be a multiple of {shards}")
  batch_axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
  tokens = P(batch_axes)
  expert_spec = P(EXPERT_AXIS) if EXPERT_AXIS in mesh.axis_names else P()

  def body(x, expert_index, weight, position, valid, params):
    local = Routing(expert_index=expert_index, weight=weight, position=position, valid=valid,
                    num_experts=routing.num_experts, capacity=routing.capacity)
    return _local_moe(x, local, params, expert_fn, dispatch, layout, num_shards, shards,
                      exchange)

  # check_vma=False: the grouped matmul's loops start from replicated zeros
  # and accumulate per-device values, which the varying-axes check rejects.
  fn = jax.shard_map(body, mesh=mesh,
                     in_specs=(tokens,) * 5 + (jax.tree.map(lambda _: expert_spec, params),),
                     out_specs=tokens, check_vma=False)
  return fn(x, routing.expert_index, routing.weight, routing.position, routing.valid, params)
