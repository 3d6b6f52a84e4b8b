"""Expert-parallel dispatch on 8 fake devices equals the single-device layer:
outputs and gradients (params and inputs), for each EP strategy."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jax import export

from moejax.config import MoEConfig, RouterConfig
from moejax.dispatch import expert_parallel as expert_parallel_module
from moejax.dispatch.expert_parallel import resolve_exchange
from moejax.moe import MoELayer
from moejax.parallel import MeshConfig, make_mesh, tree_shardings
from moejax.routing.product_keys import ProductKeyOptions

# f32: the EP path sums the same products in a different order.
ATOL = 2e-5


def _layer(dispatch, capacity_factor, groups, activation="swiglu", use_bias=True, **moe):
  router = RouterConfig(num_experts=8, top_k=2, capacity_factor=capacity_factor,
                        routing_groups=groups)
  return MoELayer(MoEConfig(router=router, d_model=16, d_ff=24, activation=activation,
                            use_bias=use_bias, dispatch=dispatch, **{"gmm_block_size": 8, **moe}))


def _loss_and_grads(layer, variables, x, probe, deterministic=True):
  def loss(params, x):
    y, aux = layer.apply({**variables, "params": params}, x, deterministic=deterministic)
    return jnp.sum(y * probe) + aux.losses["load_balance"], y
  (value, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      variables["params"], x)
  return value, y, grads


def _compare(layer, mesh_config, tokens=64, deterministic=True, set_state=None):
  """set_state: variables -> variables (e.g. non-zero router thresholds)."""
  rng = jax.random.key(0)
  x = jax.random.normal(rng, (tokens, 16))
  probe = jax.random.normal(jax.random.key(1), (tokens, 16))
  variables = jax.jit(layer.init)(rng, x)
  if set_state is not None:
    variables = set_state(variables)
  ref = jax.jit(lambda v, x: _loss_and_grads(layer, v, x, probe, deterministic))(variables, x)
  mesh = make_mesh(mesh_config)
  with jax.set_mesh(mesh):
    sharded = jax.device_put(variables, tree_shardings(variables, mesh))
    xs = jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp", "expert"))))
    got = jax.jit(lambda v, x: _loss_and_grads(layer, v, x, probe, deterministic))(sharded, xs)
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=ATOL, rtol=1e-5)
  return ref


@pytest.mark.parametrize("mesh_config", [MeshConfig(data=2, expert=4), MeshConfig(expert=8),
                                         MeshConfig(data=8)])
def test_capacity_all_to_all_equals_single_device(mesh_config):
  layer = _layer("gather", 1.0, groups=8)
  value, y, _ = _compare(layer, mesh_config)
  assert float(jnp.abs(y).max()) > 0


@pytest.mark.parametrize("mesh_config", [MeshConfig(data=2, expert=4), MeshConfig(expert=8),
                                         MeshConfig(fsdp=2, expert=2, tensor=2)])
def test_dropless_exchange_equals_single_device(mesh_config):
  _compare(_layer("dropless", None, groups=1), mesh_config)


def test_dropless_with_everything_on_one_expert():
  """A destination device receiving every row of every source is the padded
  exchange's worst case: nothing may be dropped."""
  layer = _layer("dropless", None, groups=1, activation="gelu", use_bias=False)
  rng = jax.random.key(0)
  x = jnp.abs(jax.random.normal(rng, (64, 16)))
  variables = jax.jit(layer.init)(rng, x)
  kernel = variables["params"]["router"]["kernel"]
  kernel = jnp.zeros_like(kernel).at[:, 5].set(1.0).at[:, 6].set(0.5)  # experts 5, 6
  variables = {"params": {**variables["params"], "router": {"kernel": kernel}}}
  ref = jax.jit(layer.apply)(variables, x)[0]
  mesh = make_mesh(MeshConfig(data=2, expert=4))
  with jax.set_mesh(mesh):
    got = jax.jit(layer.apply)(jax.device_put(variables, tree_shardings(variables, mesh)), x)[0]
  np.testing.assert_allclose(np.asarray(ref), np.asarray(got), atol=ATOL)


def test_einsum_and_ungrouped_capacity_fall_back_to_the_partitioner():
  _compare(_layer("einsum", 1.0, groups=1), MeshConfig(data=2, expert=4))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    _compare(_layer("gather", 1.0, groups=2), MeshConfig(data=2, expert=4))
  assert any("routing_groups" in str(w.message) for w in caught)


def test_expert_weights_are_sharded_by_the_rules():
  layer = _layer("dropless", None, groups=1)
  variables = jax.jit(layer.init)(jax.random.key(0), jnp.zeros((64, 16)))
  mesh = make_mesh(MeshConfig(fsdp=2, expert=2, tensor=2))
  placed = jax.device_put(variables, tree_shardings(variables, mesh))
  experts = placed["params"]["experts"]
  assert experts["w_in"].sharding.spec == P("expert", "fsdp", "tensor")
  assert experts["w_out"].sharding.spec == P("expert", "tensor", "fsdp")
  assert experts["b_in"].sharding.spec == P("expert", "tensor")
  # Each device holds 8/2 experts, half of d_model and half of d_ff.
  assert experts["w_in"].addressable_shards[0].data.shape == (4, 8, 12)
  assert placed["params"]["router"]["kernel"].sharding.spec == P(None, None)


def _emulated_ragged_all_to_all(operand, output, input_offsets, send_sizes, output_offsets,
                                recv_sizes, *, axis_name):
  """jax.lax.ragged_all_to_all's documented semantics from all_gather and a
  scatter, for XLA:CPU, which lacks the op: every device gathers all senders'
  slices and keeps those addressed to it."""
  del recv_sizes  # implied by the senders' send_sizes
  me = jax.lax.axis_index(axis_name)
  operands, starts, sizes, dests = (jax.lax.all_gather(a, axis_name)
                                    for a in (operand, input_offsets, send_sizes, output_offsets))
  per_device = input_offsets.shape[0] // operands.shape[0]
  mine = me * per_device + jnp.arange(per_device)                     # slices sent to me
  j = jnp.arange(operand.shape[0])
  src = jnp.minimum(starts[:, mine, None] + j, operand.shape[0] - 1)  # [src, slice, row]
  dst = jnp.where(j < sizes[:, mine, None], dests[:, mine, None] + j, output.shape[0])
  rows = operands[jnp.arange(operands.shape[0])[:, None, None], src]
  return output.at[dst.reshape(-1)].set(rows.reshape(-1, *operand.shape[1:]), mode="drop")


def test_the_emulation_matches_the_documented_example():
  """The example in jax.lax.ragged_all_to_all's docstring, on 2 devices."""
  mesh = jax.make_mesh((2,), ("x",), devices=jax.devices()[:2])
  rows = lambda *a: jnp.array(a, jnp.int32)
  args = (rows([1, 2, 2], [3, 4, 0]), jnp.zeros((2, 4), jnp.int32), rows([0, 1], [0, 1]),
          rows([1, 2], [1, 1]), rows([0, 0], [1, 2]), rows([1, 1], [2, 1]))
  fn = lambda *a: _emulated_ragged_all_to_all(*(b[0] for b in a), axis_name="x")[None]
  with jax.set_mesh(mesh):
    args = jax.device_put(args, NamedSharding(mesh, P("x")))
    got = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=P("x"), out_specs=P("x")))(*args)
  np.testing.assert_array_equal(np.asarray(got), [[1, 3, 0, 0], [2, 2, 4, 0]])


@pytest.mark.parametrize("mesh_config", [MeshConfig(data=2, expert=4), MeshConfig(expert=8)])
@pytest.mark.parametrize("block_size", [1, 8])
def test_ragged_exchange_equals_single_device(monkeypatch, mesh_config, block_size):
  """The ragged exchange's offsets, run through the emulation: outputs and
  gradients equal the single-device layer."""
  monkeypatch.setattr(expert_parallel_module, "ragged_all_to_all", _emulated_ragged_all_to_all)
  backend = "blocked" if block_size > 1 else "ragged_dot"
  _compare(_layer("dropless", None, groups=1, ep_exchange="ragged", gmm_backend=backend,
                  gmm_block_size=max(block_size, 1)), mesh_config)


def test_auto_exchange_is_ragged_only_on_accelerators():
  assert [resolve_exchange("auto", p) for p in ("cpu", "gpu", "tpu")] == [
      "padded", "ragged", "ragged"]
  assert resolve_exchange("padded", "gpu") == "padded"


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("exchange, collective", [
    ("ragged", "stablehlo.custom_call @ragged_all_to_all("),
    ("padded", "stablehlo.all_to_all")])
def test_dropless_exchange_lowers_for_accelerators(platform, exchange, collective):
  """The expert-parallel train step (value and grads) exported for GPU and
  TPU on this CPU host: the exchange's collectives are in the module, four of
  them (two moves forward, their transposes backward)."""
  layer = _layer("dropless", None, groups=1, ep_exchange=exchange, gmm_backend="ragged_dot",
                 gmm_block_size=1)
  x = jnp.zeros((64, 16))
  variables = jax.jit(layer.init)(jax.random.key(0), x)
  mesh = make_mesh(MeshConfig(data=2, expert=4))
  with jax.set_mesh(mesh):
    shardings = tree_shardings(variables, mesh)
    step = jax.jit(lambda v, x: _loss_and_grads(layer, v, x, jnp.ones_like(x)),
                   in_shardings=(shardings, NamedSharding(mesh, P(("data", "fsdp", "expert")))))
    # JAX lowers ragged_all_to_all to a custom call without export
    # compatibility guarantees; exporting here only checks that it lowers.
    exported = export.export(
        step, platforms=[platform],
        disabled_checks=[export.DisabledSafetyCheck.custom_call("ragged_all_to_all")])(
            variables, x)
  text = exported.mlir_module()
  if exchange == "ragged":
    assert text.count(collective) == 4
  else:
    # The rows forward and back, their transposes, and the counts.
    assert text.count(collective) == 5 and "ragged_all_to_all" not in text


def test_mh_moe_runs_expert_parallel_like_one_device():
  """MH-MoE's sub-token layer is a plain MoELayer: on a data x expert mesh
  its dropless exchange gives the single-device outputs and gradients."""
  from moejax import MultiHeadMoELayer
  router = RouterConfig(num_experts=8, top_k=2, capacity_factor=None)
  layer = MultiHeadMoELayer(MoEConfig(router=router, d_model=16, d_ff=24, activation="swiglu",
                                      dispatch="dropless", gmm_block_size=8, mh_heads=2))
  _compare(layer, MeshConfig(data=2, expert=4))


@pytest.mark.parametrize("router, dispatch, deterministic", [
    (dict(num_null_experts=1, num_copy_experts=1, num_constant_experts=2), "dropless", True),
    (dict(dense_training=True), "dropless", False),
    (dict(name="expert_threshold"), "dropless", True),
    (dict(name="product_key", num_experts=64, top_k=4, options=ProductKeyOptions(heads=2, key_dim=8)),
     "retrieval", True),
], ids=["moe_plus_plus", "ds_moe_training", "expert_threshold", "peer_partitioner"])
def test_literature_designs_on_a_mesh_equal_one_device(router, dispatch, deterministic):
  """MoE++, DS-MoE's dense training call and causal expert choice run the
  expert-parallel exchange; PEER's retrieval runs through XLA's partitioner.
  Outputs and gradients equal the single-device layer's."""
  fields = {"num_experts": 8, "top_k": 2, "capacity_factor": None, **router}
  layer = MoELayer(MoEConfig(router=RouterConfig(**fields), d_model=16,
                             d_ff=1 if dispatch == "retrieval" else 24, activation="gelu",
                             dispatch=dispatch, gmm_block_size=8))

  def thresholds(variables):  # expert_threshold: sparse, data-dependent routing
    if "router_state" not in variables:
      return variables
    state = {"router": {"expert_threshold": jnp.full((8,), 0.12),
                        "threshold_updates": jnp.asarray(3, jnp.int32)}}
    return {**variables, "router_state": state}
  _compare(layer, MeshConfig(data=2, expert=4), deterministic=deterministic,
           set_state=thresholds)


@pytest.mark.parametrize("mesh_config", [MeshConfig(data=2, expert=4), MeshConfig(data=8)])
def test_gathered_experts_on_a_mesh_equal_one_device(mesh_config):
  """gmm_backend='gathered': one device reads token rows by index inside the
  expert loop; an expert axis of 4 exchanges grouped rows instead, a data
  axis of 8 runs the by-index loop inside shard_map. Values and gradients
  agree."""
  router = RouterConfig(num_experts=8, top_k=2, capacity_factor=None)
  layer = MoELayer(MoEConfig(router=router, d_model=16, d_ff=24, activation="swiglu",
                             use_bias=True, dispatch="dropless", gmm_backend="gathered",
                             gmm_block_size=8))
  _compare(layer, mesh_config)
