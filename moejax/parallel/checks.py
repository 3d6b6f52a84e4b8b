"""Up-front checks of an experiment against a mesh: one clear line each,
before anything is traced or compiled."""

from __future__ import annotations

import math
from typing import Dict

from moejax.parallel.mesh import BATCH_AXES


def tokens_per_call(exp) -> int:
  """Tokens one MoE layer call sees in a training step (the global batch)."""
  m = exp.model
  if m.kind == "lm":
    return exp.data.batch_size * exp.data.seq_len
  return exp.data.batch_size * (m.num_patches + (m.vit.pool == "cls"))


def check_experiment_on_mesh(exp, sizes: Dict[str, int], platform: str = "cpu") -> None:
  """Raises ValueError naming the field when exp cannot run on a mesh of these
  axis sizes ({axis: size}, e.g. MeshConfig.shape(device_count)) of
  `platform` devices ('cpu', 'gpu', 'tpu')."""
  shards = math.prod(sizes[a] for a in BATCH_AXES)
  batch = exp.data.batch_size
  if batch % shards:
    raise ValueError(
        f"data.batch_size={batch} is invalid: the batch is split over mesh axes data x fsdp x "
        f"expert = {sizes['data']} x {sizes['fsdp']} x {sizes['expert']} = {shards} devices; "
        f"use a multiple of {shards}")
  moe = exp.model.moe
  if moe is None:
    if sizes["expert"] > 1:
      raise ValueError(f"mesh.expert={sizes['expert']} is invalid: the model has no MoE blocks "
                       "(model.moe_every=0); use mesh.expert=1")
    return
  experts = moe.router.num_experts
  if experts % sizes["expert"]:
    raise ValueError(
        f"model.moe.router.num_experts={experts} is invalid with mesh.expert={sizes['expert']}: "
        f"each device must hold the same number of experts; use a multiple of {sizes['expert']}")
  groups = moe.router.routing_groups
  tokens = tokens_per_call(exp)
  if tokens % groups:
    raise ValueError(
        f"model.moe.router.routing_groups={groups} is invalid: it must divide the {tokens} "
        f"tokens of a batch (data.batch_size x tokens per example)")
  if (platform == "cpu" and moe.ep_exchange == "ragged" and moe.dispatch == "dropless"
      and sizes["expert"] > 1):
    raise ValueError("model.moe.ep_exchange='ragged' is invalid on CPU devices: XLA:CPU does "
                     "not implement ragged-all-to-all; use 'padded' or 'auto'")
