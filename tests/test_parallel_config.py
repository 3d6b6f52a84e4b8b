"""Mesh configuration, sharding rules and the up-front checks of an experiment
against a mesh (single device: the shapes are checked, nothing is placed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from moejax.config import RouterConfig
from moejax.parallel import (MeshConfig, check_experiment_on_mesh, logical_axes, logical_to_spec,
                             mesh_config_from_mapping)
from moejax.routing import route as eager_route
from moejax.routing import route_in_groups as eager_route_in_groups
from moejax.train import experiment_from_config
from tests.helpers import compiled
from tiny_configs import tiny_config

route, route_in_groups = compiled(eager_route), compiled(eager_route_in_groups)


def test_fill_axis_takes_the_remaining_devices():
  assert MeshConfig(expert=4).shape(8) == {"data": 2, "fsdp": 1, "expert": 4, "tensor": 1}
  assert MeshConfig(data=2, expert=-1).shape(8)["expert"] == 4
  assert MeshConfig().shape(1) == {"data": 1, "fsdp": 1, "expert": 1, "tensor": 1}


@pytest.mark.parametrize("config, devices, field", [
    (dict(data=3, expert=1), 8, "mesh="),
    (dict(expert=3), 8, "mesh.data=-1"),
    (dict(data=-1, expert=-1), 8, "mesh.expert=-1"),
    (dict(tensor=0), 8, "mesh.tensor=0"),
    (dict(pipeline=2), 8, "mesh.pipeline=2"),
])
def test_bad_mesh_is_one_line_naming_the_field(config, devices, field):
  with pytest.raises(ValueError) as err:
    mesh_config_from_mapping(config).shape(devices)
  message = str(err.value)
  assert message.startswith(field) and "\n" not in message


@pytest.mark.parametrize("overrides, sizes, field", [
    (dict(model__moe__router__num_experts=6), dict(data=2, expert=4),
     "model.moe.router.num_experts=6"),
    (dict(data__batch_size=12), dict(data=2, expert=4), "data.batch_size=12"),
    (dict(model__moe__router__routing_groups=3), dict(data=1, expert=1),
     "model.moe.router.routing_groups=3"),
    (dict(model__moe_every=0), dict(data=1, expert=2), "mesh.expert=2"),
    (dict(model__moe__dispatch="dropless", model__moe__ep_exchange="ragged"),
     dict(data=1, expert=2), "model.moe.ep_exchange='ragged'"),
])
def test_experiment_that_cannot_run_on_the_mesh_fails_before_compiling(overrides, sizes, field):
  exp = experiment_from_config(tiny_config(**overrides))
  full = {"data": 1, "fsdp": 1, "expert": 1, "tensor": 1, **sizes}
  with pytest.raises(ValueError) as err:
    check_experiment_on_mesh(exp, full)
  assert str(err.value).startswith(field) and "\n" not in str(err.value)


def test_logical_rules_split_only_what_divides():
  class FakeMesh:
    shape = {"data": 2, "fsdp": 2, "expert": 4, "tensor": 3}
  names = logical_axes("block_0/moe/experts/w_in", 3)
  assert names == ("expert", "embed", "mlp")
  # d_ff=10 does not divide by tensor=3: replicated along it.
  assert logical_to_spec(names, (8, 16, 10), FakeMesh) == P("expert", "fsdp", None)
  assert logical_to_spec(logical_axes("opt_state/0/mu/embed/embedding", 2), (256, 16),
                         FakeMesh) == P(None, "fsdp")
  assert logical_axes("block_0/moe/router/kernel", 2) == (None, None)


@pytest.mark.parametrize("name, capacity", [("top_k", 1.0), ("top_k", None),
                                             ("expert_choice", 1.0)])
def test_routing_groups_equal_routing_each_group_alone(name, capacity):
  """G groups = G separate calls; positions offset by group (g*C slots)."""
  config = RouterConfig(name=name, num_experts=4, top_k=2 if name == "top_k" else 1,
                        capacity_factor=capacity, routing_groups=4)
  logits = jax.random.normal(jax.random.key(0), (32, 4))
  grouped = route_in_groups(config, logits)
  alone = [route(config, chunk) for chunk in jnp.split(logits, 4)]
  slots = alone[0].routing.capacity or 8
  assert grouped.routing.buffer_size() == 4 * slots
  for g, out in enumerate(alone):
    rows = slice(8 * g, 8 * (g + 1))
    r = grouped.routing
    np.testing.assert_array_equal(r.expert_index[rows], out.routing.expert_index)
    np.testing.assert_array_equal(r.valid[rows], out.routing.valid)
    np.testing.assert_allclose(r.weight[rows], out.routing.weight)
    np.testing.assert_array_equal(
        np.where(r.valid[rows], r.position[rows], -1),
        np.where(out.routing.valid, out.routing.position + g * slots, -1))
  np.testing.assert_allclose(grouped.choice_counts, sum(o.choice_counts for o in alone))
