"""Expert-parallel dispatch on 8 fake devices equals the single-device layer:
outputs and gradients (params and inputs), for each EP strategy."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from moejax.config import MoEConfig, RouterConfig
from moejax.moe import MoELayer
from moejax.parallel import MeshConfig, make_mesh, tree_shardings

# f32: the EP path sums the same products in a different order.
ATOL = 2e-5


def _layer(dispatch, capacity_factor, groups, activation="swiglu", use_bias=True):
  router = RouterConfig(num_experts=8, top_k=2, capacity_factor=capacity_factor,
                        routing_groups=groups)
  return MoELayer(MoEConfig(router=router, d_model=16, d_ff=24, activation=activation,
                            use_bias=use_bias, dispatch=dispatch, gmm_block_size=8))


def _loss_and_grads(layer, variables, x, probe):
  def loss(params, x):
    y, aux = layer.apply({"params": params}, x)
    return jnp.sum(y * probe) + aux.losses["load_balance"], y
  (value, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      variables["params"], x)
  return value, y, grads


def _compare(layer, mesh_config, tokens=64):
  rng = jax.random.key(0)
  x = jax.random.normal(rng, (tokens, 16))
  probe = jax.random.normal(jax.random.key(1), (tokens, 16))
  variables = jax.jit(layer.init)(rng, x)
  ref = jax.jit(lambda v, x: _loss_and_grads(layer, v, x, probe))(variables, x)
  mesh = make_mesh(mesh_config)
  with jax.set_mesh(mesh):
    sharded = jax.device_put(variables, tree_shardings(variables, mesh))
    xs = jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp", "expert"))))
    got = jax.jit(lambda v, x: _loss_and_grads(layer, v, x, probe))(sharded, xs)
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
  ref = layer.apply(variables, x)[0]
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
