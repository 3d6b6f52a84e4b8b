"""Router families: one registered object per module of moejax.routing; their
options are nested config sections; configs of the earlier flat layout are
migrated where they were saved and refused where they are written."""

import dataclasses
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax import MoEConfig, MoELayer, RouterConfig
from moejax.models import build_model
from moejax.routing.config import (MOVED_FIELDS, TOKEN_CHOICE_FIELDS, migrate_flat_router_fields,
                                   option_sections, router_config_from_mapping,
                                   router_config_to_mapping)
from moejax.routing.family import router_families
from moejax.train import CheckpointError, Checkpointer, experiment_from_config
from moejax.train.defaults import experiment_config
from moejax.train.presets import lm_tiny
from moejax.train.sources import load_any, load_model_config

# A workdir written by moejax before router options were nested (soft_moe with
# router.num_slots=2, 1 block, d_model 16, 2 steps; commit af5118d).
FLAT_WORKDIR = pathlib.Path(__file__).parent / "data" / "workdir_flat_router_layout"

_VALID = {  # a valid config of each family (the defaults fit most)
    "expert_choice": dict(capacity_factor=1.0),
    "hash": dict(top_k=1),
    "product_key": dict(num_experts=16),
    "sinkhorn": dict(top_k=1),
    "soft_moe": dict(top_k=1),
}


def test_every_family_module_registers_one_family_with_its_facts():
  families = router_families()
  assert {"top_k", "threshold", "sparsemixer", "hash", "expert_choice", "expert_threshold",
          "product_key", "sinkhorn", "soft_moe"} <= set(families)
  assert next(iter(families)) == "top_k"   # the default first
  for name, family in families.items():
    assert family.name == name and family.summary
    assert set(family.reads) <= set(TOKEN_CHOICE_FIELDS), name
    assert set(family.per_token_inputs) <= set(family.inputs), name
    config = RouterConfig(name=name, **_VALID.get(name, {}))
    assert isinstance(config.options, family.options)
    assert config.num_router_outputs >= 1


def test_moved_fields_point_at_real_options():
  sections = option_sections()
  for old, (section, option) in MOVED_FIELDS.items():
    assert option in {f.name for f in dataclasses.fields(sections[section])}, old


@pytest.mark.parametrize("name", sorted(router_families()))
def test_mapping_round_trip_of_every_family(name):
  config = RouterConfig(name=name, **_VALID.get(name, {}))
  assert router_config_from_mapping(router_config_to_mapping(config)) == config


def test_configdict_has_a_section_per_family_with_options():
  router = experiment_config().model.moe.router
  for section, options in option_sections().items():
    assert router[section].to_dict() == dataclasses.asdict(options())
  assert "options" not in router and "num_slots" not in router


def test_changing_name_keeps_unset_options_and_refuses_set_ones():
  soft = router_config_from_mapping({"name": "soft_moe", "top_k": 1,
                                     "soft_moe": {"num_slots": 3}})
  assert soft.options.num_slots == 3
  # replace() with another name: options left at their defaults follow the family.
  plain = RouterConfig(name="soft_moe", top_k=1)
  assert dataclasses.replace(plain, name="sinkhorn").options.iterations == 8
  with pytest.raises(ValueError, match=r"^router.options=SoftMoEOptions\(num_slots=3.*takes "
                                       r"SinkhornOptions"):
    dataclasses.replace(soft, name="sinkhorn")


def test_threshold_family_refuses_what_its_route_would_ignore():
  """threshold_route never read the selection bias, noise, groups or second-
  expert sampling; a config setting them trained without them, silently."""
  for field, value in (("use_expert_bias", True), ("noisy_top_k", True),
                       ("num_expert_groups", 2), ("second_expert_sampling", True)):
    with pytest.raises(ValueError, match=rf"^router.{field}={value} is invalid: only used by"):
      RouterConfig(name="threshold", **{field: value})


def test_route_refuses_an_input_its_family_does_not_read():
  from moejax.routing import route
  logits = jnp.zeros((4, 8))
  with pytest.raises(ValueError, match="does not use 'expert_bias'"):
    route(RouterConfig(name="threshold"), logits, expert_bias=jnp.zeros(8))


def test_migration_moves_every_flat_field():
  flat = {"name": "soft_moe", "top_k": 1, "num_slots": 4, "soft_moe_grouping": "call",
          "sinkhorn_iterations": 8, "threshold": 0.5, "peer_heads": 1}
  config = router_config_from_mapping(migrate_flat_router_fields(flat))
  assert config.options.num_slots == 4 and config.options.grouping == "call"
  with pytest.raises(ValueError, match="^router.num_slots=4 is invalid: moved to "
                                       "router.soft_moe.num_slots"):
    router_config_from_mapping({"name": "soft_moe", "top_k": 1, "num_slots": 4})


def _copy_flat_workdir(tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(FLAT_WORKDIR, workdir)
  return str(workdir)


def _today(**router_section):
  """The saved run's experiment as today's configs write it."""
  config = lm_tiny()
  config.model.update(num_layers=1, d_model=16, num_heads=2, dense_d_ff=32)
  config.model.moe.update(d_ff=16, dispatch="einsum")
  config.model.moe.router.update(name="soft_moe", top_k=1)
  config.model.moe.router.soft_moe.update({"num_slots": 2, **router_section})
  config.data.update(seq_len=16, batch_size=2, eval_batches=1)
  config.train.update(num_steps=2, checkpoint_every=2, warmup_steps=1)
  return experiment_from_config(config)


def test_workdir_of_the_flat_layout_loads_and_resumes(tmp_path):
  workdir = _copy_flat_workdir(tmp_path)
  model = load_model_config(workdir)
  assert model.moe.router.name == "soft_moe" and model.moe.router.options.num_slots == 2
  # Its weights run in a model built from the migrated config.
  config, variables, _ = load_any(workdir)
  assert variables["params"]["block_0"]["moe"]["router"]["kernel"].shape == (16, 16)
  logits = jax.jit(build_model(config).apply)(variables, jnp.zeros((1, 8), jnp.int32))
  logits = logits[0] if isinstance(logits, tuple) else logits
  assert np.isfinite(np.asarray(logits)).all()
  # A resume with today's equivalent config is compatible; another num_slots is not.
  ckpt = Checkpointer(workdir, keep=2, async_save=False)
  try:
    ckpt.check_compatible(2, _today().raw)
    with pytest.raises(CheckpointError, match=r"model.moe.router.soft_moe.num_slots: "
                                              r"checkpoint 2 vs config 3"):
      ckpt.check_compatible(2, _today(num_slots=3).raw)
  finally:
    ckpt.close()


def test_layer_with_a_family_state_still_updates_it():
  """expert_threshold keeps its thresholds in router_state, made by its family."""
  cfg = MoEConfig(router=RouterConfig(name="expert_threshold", num_experts=4),
                  d_model=8, d_ff=8, dispatch="dropless")
  x = jax.random.normal(jax.random.key(0), (16, 8))
  variables = jax.jit(MoELayer(cfg).init)(jax.random.key(1), x)
  assert float(jnp.abs(variables["router_state"]["router"]["expert_threshold"]).sum()) == 0
  _, state = jax.jit(lambda v, x: MoELayer(cfg).apply(v, x, deterministic=False,
                                                      mutable=["router_state"]))(variables, x)
  assert float(state["router_state"]["router"]["expert_threshold"].min()) > 0
