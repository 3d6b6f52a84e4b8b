"""Bad configuration fails at construction with one clear ValueError."""

import re

import pytest

from moejax import MoEConfig, RouterConfig
from moejax.routing.config import router_config_from_mapping
from moejax.routing.threshold import ThresholdOptions

BAD_ROUTERS = [
    (dict(top_k=9, num_experts=8), "router.top_k", "9"),
    (dict(num_experts=0), "router.num_experts", "0"),
    (dict(capacity_factor=0.0), "router.capacity_factor", "0.0"),
    (dict(capacity_factor=-1.0), "router.capacity_factor", "-1.0"),
    (dict(name="switcheroo"), "router.name", "'switcheroo'"),
    (dict(num_experts=8, num_expert_groups=3), "router.num_expert_groups", "3"),
    (dict(name="threshold", threshold=dict(probability=1.5)), "router.threshold.probability",
     "1.5"),
    (dict(name="threshold", threshold=dict(probability=0.0)), "router.threshold.probability",
     "0.0"),
    # Token-choice fields a family does not read are refused, not ignored:
    # threshold routing once dropped these silently.
    (dict(name="threshold", use_expert_bias=True), "router.use_expert_bias", "True"),
    (dict(name="threshold", noisy_top_k=True), "router.noisy_top_k", "True"),
    (dict(name="threshold", num_expert_groups=4), "router.num_expert_groups", "4"),
    (dict(name="threshold", score_fn="sigmoid"), "router.score_fn", "'sigmoid'"),
    (dict(name="expert_choice", capacity_factor=1.0, routed_scaling_factor=2.0),
     "router.routed_scaling_factor", "2.0"),
    (dict(name="soft_moe", top_k=1, gating_residual=True), "router.gating_residual", "True"),
    # A section of another family, and flat names of the earlier layout.
    (dict(sinkhorn=dict(iterations=4)), "router.sinkhorn.iterations", "4"),
    (dict(name="soft_moe", top_k=1, num_slots=4), "router.num_slots", "4"),
    (dict(name="threshold", threshold=0.7), "router.threshold", "0.7"),
    (dict(name="soft_moe", top_k=1, soft_moe=dict(slots=4)), "router.soft_moe.slots", "4"),
    (dict(score_fn="relu"), "router.score_fn", "'relu'"),
    (dict(drop_policy="random", capacity_factor=1.0), "router.drop_policy", "'random'"),
    (dict(num_expert_groups=4, top_k_groups=5), "router.top_k_groups", "5"),
    (dict(num_expert_groups=4, top_k_groups=1, top_k=3), "router.top_k", "3"),
    (dict(second_expert_sampling=True, top_k=1), "router.second_expert_sampling", "True"),
    (dict(name="expert_choice"), "router.capacity_factor", "None"),
    (dict(name="hash", top_k=2), "router.top_k", "2"),
    (dict(name="soft_moe", top_k=1, use_expert_bias=True), "router.use_expert_bias", "True"),
    (dict(top_k=2.5), "router.top_k", "2.5"),
    (dict(jitter_noise=1.0), "router.jitter_noise", "1.0"),
    (dict(name="hash", top_k=1, logit_bias=True), "router.logit_bias", "True"),
]


@pytest.mark.parametrize("kwargs,field,value", BAD_ROUTERS)
def test_bad_router_config_names_field_value_and_valid(kwargs, field, value):
  with pytest.raises(ValueError) as err:
    router_config_from_mapping(kwargs)
  message = str(err.value)
  assert message.startswith(f"{field}={value} is invalid: "), message
  assert "\n" not in message
  # The message says what would be valid (a range, a list or a rule).
  assert re.search(r"must|valid values|needs|routes|only used|leave it|moved to|unknown field",
                   message), message


@pytest.mark.parametrize("kwargs,field", [
    (dict(dispatch="scatter"), "dispatch"),
    (dict(activation="tanh"), "activation"),
    (dict(d_model=0), "d_model"),
    (dict(dispatch="gather"), "dispatch"),  # gather without a capacity
    (dict(router=RouterConfig(name="soft_moe", top_k=1), dispatch="dropless"), "dispatch"),
    (dict(shared_expert_gate=True), "shared_expert_gate"),
    (dict(gmm_backend="magic"), "gmm_backend"),
])
def test_bad_moe_config(kwargs, field):
  with pytest.raises(ValueError, match=rf"^{field}=.* is invalid: "):
    MoEConfig(**kwargs)


def test_good_configs_construct():
  RouterConfig(name="top_k", num_experts=8, top_k=8)
  RouterConfig(num_experts=8, top_k=4, num_expert_groups=4, top_k_groups=2, score_fn="sigmoid",
               use_expert_bias=True, normalize_top_k=True, routed_scaling_factor=2.5)
  RouterConfig(name="threshold", options=ThresholdOptions(probability=1.0), top_k=3,
               num_null_experts=2)
  MoEConfig(router=RouterConfig(capacity_factor=1.25), dispatch="gather")


def test_capacity_formula():
  cfg = RouterConfig(num_experts=8, top_k=2, capacity_factor=1.25)
  assert cfg.capacity(100) == 32  # ceil(1.25 * 100 * 2 / 8) = ceil(31.25)
  assert RouterConfig(num_experts=8, top_k=2).capacity(100) is None
  ec = RouterConfig(name="expert_choice", num_experts=4, capacity_factor=2.0)
  assert ec.capacity(10) == 5  # ceil(2 * 10 / 4)


def test_checkpoint_compatibility_ignores_the_moe_fields_of_a_dense_model():
  from moejax.train.compatibility import incompatible_fields
  config = lambda moe_every, dispatch: {"seed": 0, "train": {"num_steps": 5},
                                        "model": {"moe_every": moe_every,
                                                  "moe": {"dispatch": dispatch}}}
  assert incompatible_fields(config(0, "gather"), config(0, "dropless")) == {}
  assert incompatible_fields(config(1, "gather"), config(1, "dropless")) == {
      "model.moe.dispatch": ("gather", "dropless")}
  assert set(incompatible_fields(config(0, "gather"), config(1, "gather"))) == {
      "model.moe_every"}


def test_a_checkpoint_from_before_a_field_existed_is_compatible_at_its_default():
  """A field a checkpoint's saved config lacks (added to moejax later) only
  conflicts when the current config sets it away from its default."""
  from moejax.train.compatibility import incompatible_fields
  from moejax.train.defaults import experiment_config
  current = experiment_config().to_dict()
  saved = experiment_config().to_dict()
  del saved["model"]["attention_experts"], saved["model"]["moe"]["router"]["dense_training"]
  assert incompatible_fields(saved, current) == {}
  current["model"]["attention_experts"] = 4
  assert incompatible_fields(saved, current) == {"model.attention_experts": (None, 4)}


@pytest.mark.parametrize("fields, message", [
    (dict(rope_scaling="proportional"), "model.lm.rope_scaling='proportional' is invalid"),
    (dict(rope_scaling="longrope"), r"model.lm.rope_long_factor=\(\) is invalid: 'longrope' needs"),
    (dict(rope_scaling="dynamic"), "model.lm.rope_max_positions=0 is invalid"),
    (dict(rope_scaling="linear", rope_factor=0.5),
     "model.lm.rope_factor=0.5 is invalid: must be >= 1"),
    (dict(rope_scaling="llama3", rope_low_freq_factor=4.0, rope_high_freq_factor=1.0),
     "model.lm.rope_high_freq_factor=1.0 is invalid: must be > rope_low_freq_factor=4.0"),
])
def test_bad_rope_scaling_is_one_line(fields, message):
  from moejax.models.config import LMConfig
  with pytest.raises(ValueError, match=message):
    LMConfig(**fields)


@pytest.mark.parametrize("fields, message", [
    (dict(full_attention_layers=(1,)), r"model.full_attention_layers=\(1,\) is invalid: only "
     "means something with model.attention_window > 0"),
    (dict(attention_window=4, full_attention_layers=(4,)),
     r"model.full_attention_layers=\(4,\) is invalid: must hold block indices in \[0, 4\)"),
    (dict(clip_qkv=0.0), "model.clip_qkv=0.0 is invalid"),
    (dict(attention="mla", clip_qkv=8.0), "model.clip_qkv=8.0 is invalid: is for attention='mha'"),
])
def test_bad_attention_options_are_one_line(fields, message):
  from moejax.models.config import ModelConfig
  with pytest.raises(ValueError, match=message):
    ModelConfig(moe_every=0, **fields)
