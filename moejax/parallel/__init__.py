"""Parallelism: the device mesh, logical-axis sharding rules, multi-host
start-up, and the up-front checks of an experiment against a mesh. Expert-
parallel dispatch itself lives in moejax.dispatch.expert_parallel."""

from moejax.parallel.checks import check_experiment_on_mesh
from moejax.parallel.distributed import initialize
from moejax.parallel.mesh import (BATCH_AXES, MESH_AXES, MeshConfig, axis_size, current_mesh,
                                  make_mesh, mesh_config_from_mapping)
from moejax.parallel.rules import (LOGICAL_RULES, PARAM_LOGICAL_AXES, batch_sharding,
                                   logical_axes, logical_to_spec, replicated, tree_shardings)

__all__ = ["BATCH_AXES", "MESH_AXES", "MeshConfig", "axis_size", "batch_sharding",
           "check_experiment_on_mesh", "current_mesh", "initialize", "LOGICAL_RULES",
           "PARAM_LOGICAL_AXES", "logical_axes", "logical_to_spec", "make_mesh",
           "mesh_config_from_mapping", "replicated", "tree_shardings"]
