"""The LM and the ViT: shapes, causality, MoE placement, and that a few
optimizer steps on a fixed batch reduce the loss for each model family."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.models import ModelConfig, build_model
from moejax.models.blocks import rotary_embedding
from moejax.train import experiment_from_config
from moejax.train.optim import make_optimizer
from moejax.train.step import init_state, make_train_step
from tiny_configs import tiny_config

FAMILIES = {
    "lm_moe_dropless": dict(kind="lm"),
    "lm_dense": dict(kind="lm", model__moe_every=0),
    "lm_expert_choice_gather": dict(kind="lm", model__moe__dispatch="gather",
                                    model__moe__router__name="expert_choice",
                                    model__moe__router__capacity_factor=1.0),
    "lm_deepseek_bias_shared": dict(kind="lm", model__first_dense_layers=1,
                                    model__moe__num_shared_experts=1,
                                    model__moe__router__score_fn="sigmoid",
                                    model__moe__router__normalize_top_k=True,
                                    model__moe__router__use_expert_bias=True),
    "lm_hash": dict(kind="lm", model__moe__router__name="hash", model__moe__router__top_k=1),
    "lm_expert_threshold": dict(kind="lm", model__moe__router__name="expert_threshold"),
    "lm_peer": dict(kind="lm", model__moe__router__name="product_key",
                    model__moe__router__num_experts=64, model__moe__router__top_k=4,
                    model__moe__router__product_key__heads=2,
                    model__moe__router__product_key__key_dim=8,
                    model__moe__d_ff=1, model__moe__dispatch="retrieval"),
    "lm_moe_plus_plus": dict(kind="lm", model__moe__router__num_null_experts=1,
                             model__moe__router__num_copy_experts=1,
                             model__moe__router__num_constant_experts=1,
                             model__moe__router__gating_residual=True),
    "lm_switchhead": dict(kind="lm", model__attention_experts=4, model__attention_top_k=2),
    "lm_ds_moe": dict(kind="lm", model__moe__router__dense_training=True,
                      train__mutual_information_weight=1e-2),
    "vit_moe_bpr": dict(kind="vit", model__moe__dispatch="gather",
                        model__moe__router__capacity_factor=1.0,
                        model__moe__router__drop_policy="probability"),
    "vit_soft_moe": dict(kind="vit", model__moe__dispatch="einsum",
                         model__moe__router__name="soft_moe", model__vit__pool="cls"),
}


def _fixed_batch(exp, rng):
  b = exp.data.batch_size
  if exp.model.kind == "lm":
    tokens = rng.integers(0, 256, (b, exp.data.seq_len + 1))
    return {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32),
            "mask": np.ones((b, exp.data.seq_len), np.float32)}
  s = exp.model.vit.image_size
  return {"inputs": rng.random((b, s, s, 1), np.float32),
          "targets": rng.integers(0, 10, (b,)).astype(np.int32), "mask": np.ones((b,), np.float32)}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_steps_reduce_loss_on_a_fixed_batch(family):
  kwargs = dict(FAMILIES[family])
  exp = experiment_from_config(tiny_config(train__learning_rate=1e-2, **kwargs))
  model, optimizer = build_model(exp.model), make_optimizer(exp.train)
  batch = _fixed_batch(exp, np.random.default_rng(0))
  state = jax.jit(lambda: init_state(model, optimizer, jax.random.key(0),
                                     jnp.asarray(batch["inputs"])))()
  step = jax.jit(make_train_step(model, optimizer, exp.train, seed=0))
  losses = []
  for _ in range(10):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.9 * losses[0], losses
  if exp.model.moe_layers and exp.model.moe.router.num_experts <= 8:
    load = np.asarray(metrics["expert_load"])
    assert load.shape == (len(exp.model.moe_layers), exp.model.moe.router.num_experts)
    np.testing.assert_allclose(load.sum(-1), 1.0, rtol=1e-5)
  if "bias" in family:  # aux-loss-free bias moved away from zero during training
    bias = jax.tree.leaves(state["router_state"])
    assert bias and any(np.abs(np.asarray(b)).max() > 0 for b in bias)


def test_soft_moe_vit_logits_do_not_depend_on_batch_neighbours():
  """Soft MoE slots are per image (the default grouping): an image's eval
  logits are the same whatever the other images of its batch are."""
  exp = experiment_from_config(tiny_config(**FAMILIES["vit_soft_moe"]))
  model = build_model(exp.model)
  images = np.random.default_rng(0).random((4, 8, 8, 1), np.float32)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.asarray(images))
  apply = jax.jit(model.apply)
  logits, _ = apply(variables, jnp.asarray(images))
  neighbours = images.copy()
  neighbours[1:] = np.random.default_rng(1).random((3, 8, 8, 1), np.float32)
  other, _ = apply(variables, jnp.asarray(neighbours))
  np.testing.assert_allclose(np.asarray(logits[0]), np.asarray(other[0]), atol=1e-6)
  alone, _ = apply(variables, jnp.asarray(images[:1]))
  np.testing.assert_allclose(np.asarray(logits[0]), np.asarray(alone[0]), atol=1e-6)


def test_lm_is_causal():
  exp = experiment_from_config(tiny_config(model__moe__router__capacity_factor=None))
  model = build_model(exp.model)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 256, (2, 16)), jnp.int32)
  variables = jax.jit(model.init)(jax.random.key(0), tokens)
  apply = jax.jit(model.apply)
  logits, _ = apply(variables, tokens)
  changed = tokens.at[:, 10].set((tokens[:, 10] + 1) % 256)
  logits2, _ = apply(variables, changed)
  np.testing.assert_array_equal(np.asarray(logits[:, :10]), np.asarray(logits2[:, :10]))
  assert not np.allclose(logits[:, 10:], logits2[:, 10:])


def test_rope_preserves_norm_and_encodes_relative_position():
  rng = np.random.default_rng(2)
  q, k = (jnp.asarray(rng.normal(size=(1, 1, 1, 8)), jnp.float32) for _ in range(2))
  rot = lambda x, p: rotary_embedding(x, jnp.array([p]), 10000.0)
  np.testing.assert_allclose(jnp.linalg.norm(rot(q, 5)), jnp.linalg.norm(q), rtol=1e-5)
  dot = lambda i, j: float(jnp.sum(rot(q, i) * rot(k, j)))
  np.testing.assert_allclose(dot(3, 1), dot(10, 8), rtol=1e-4)


def test_moe_block_placement():
  from moejax import MoEConfig
  cfg = ModelConfig(num_layers=6, moe_every=2, first_dense_layers=1, moe=MoEConfig(d_model=128))
  assert cfg.moe_layers == (2, 4)
  assert ModelConfig(num_layers=3, moe_every=1, moe=MoEConfig(d_model=128)).moe_layers == (0, 1, 2)
  assert ModelConfig(moe_every=0).moe_layers == ()


@pytest.mark.parametrize("override,expected", [
    (dict(model__num_heads=3), "model.num_heads=3 is invalid: must divide d_model=32"),
    (dict(model__moe__router__top_k=9), "model.moe.router.top_k=9 is invalid"),
    (dict(model__moe_every=5), "model.moe_every=5 is invalid: gives no MoE block"),
    (dict(data__batch_size=0), "data.batch_size=0 is invalid"),
    (dict(train__lr_schedule="exp"), "train.lr_schedule='exp' is invalid"),
    (dict(model__moe__d_model=16), "model.moe.d_model=16 is invalid: must equal model.d_model"),
    (dict(model__vit__patch_size=3), "model.vit.patch_size=3 is invalid: must divide image_size=8"),
    (dict(model__mla__rope_dim=3), "model.mla.rope_dim=3 is invalid: must be even"),
    (dict(model__lm__vocab_size=100), "model.lm.vocab_size=100 is invalid: must be >= 256"),
])
def test_bad_experiment_config_names_the_field(override, expected):
  with pytest.raises(ValueError, match=None) as err:
    experiment_from_config(tiny_config(**override))
  assert expected in str(err.value), str(err.value)


def test_sub_configs_round_trip_through_a_mapping():
  import dataclasses
  from moejax.models import model_config_from_mapping
  from moejax.models.config import ViTConfig
  cfg = ModelConfig(kind="vit", moe_every=0, vit=ViTConfig(image_size=8, patch_size=4, pool="cls"))
  assert cfg.num_patches == 4
  assert model_config_from_mapping(dataclasses.asdict(cfg)) == cfg


@pytest.mark.parametrize("values,expected", [
    ({"vocab_size": 512}, "model.vocab_size=512 is invalid: moved to model.lm.vocab_size"),
    ({"mla_kv_rank": 8}, "model.mla_kv_rank=8 is invalid: moved to model.mla.kv_rank"),
    ({"vit": {"pool": "max"}}, "model.vit.pool='max' is invalid"),
    ({"lm": {"theta": 1.0}}, "model.lm.theta=1.0 is invalid: unknown field"),
])
def test_sub_config_fields_are_named_with_their_section(values, expected):
  from moejax.models import model_config_from_mapping
  with pytest.raises(ValueError) as err:
    model_config_from_mapping({"moe_every": 0, **values})
  assert expected in str(err.value), str(err.value)


@pytest.mark.parametrize("path", sorted(__import__("glob").glob(
    str(__import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "*.py"))))
def test_every_config_file_validates(path):
  import importlib.util
  spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  if "moe" in config:  # configs/layer_demo.py is the layer demo's, not an experiment
    return
  exp = experiment_from_config(config)
  assert exp.model.num_layers >= 1


def test_every_router_zoo_entry_validates():
  from moejax.studies.router_zoo import ZOO, zoo_configs
  from moejax.train.presets import lm_tiny
  for name, config in zoo_configs(lm_tiny(), list(ZOO)):
    assert experiment_from_config(config).model.moe_layers, name
