"""LoRA adapters on the routed experts (model.moe.lora_rank) and training
only them (train.trainable): the adapted model starts equal to its base,
only adapters (and routers, if asked) change, gradients match finite
differences, and merging them for export computes the same function."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from moejax.config import MoEConfig, RouterConfig
from moejax.convert.lora import merge_lora
from moejax.models import ModelConfig, TransformerLM
from moejax.models.config import LMConfig
from moejax.train import Checkpointer, experiment_from_config, train_and_evaluate
from moejax.train.init_from import resolve_model
from tiny_configs import tiny_config

TOKENS = np.random.default_rng(0).integers(0, 64, size=(2, 12)).astype(np.int32)


def _config(lora_rank=0, activation="swiglu", shared_base=False):
  moe = MoEConfig(router=RouterConfig(num_experts=4, top_k=2), d_model=32, d_ff=24,
                  activation=activation, dispatch="dropless", lora_rank=lora_rank,
                  lora_shared_base=shared_base)
  return ModelConfig(kind="lm", num_layers=2, d_model=32, num_heads=2, dense_d_ff=48, moe=moe,
                     lm=LMConfig(vocab_size=64))


def _adapted(base_variables, config):
  """config's fresh adapters on top of base_variables' weights."""
  fresh = jax.jit(TransformerLM(config).init)(jax.random.PRNGKey(1), TOKENS)
  flat = flatten_dict(fresh["params"])
  flat.update(flatten_dict(base_variables["params"]))
  from flax.traverse_util import unflatten_dict
  return {"params": unflatten_dict(flat)}


def test_adapted_model_starts_as_its_base_and_merges_exactly():
  base = _config()
  variables = jax.jit(TransformerLM(base).init)(jax.random.PRNGKey(0), TOKENS)
  adapted_config = _config(lora_rank=4)
  adapted = _adapted(variables, adapted_config)
  names = [k[-1] for k in flatten_dict(adapted["params"]) if "lora" in k[-1]]
  assert sorted(set(names)) == ["w_gate_lora_a", "w_gate_lora_b", "w_in_lora_a", "w_in_lora_b",
                                "w_out_lora_a", "w_out_lora_b"]
  logits = lambda cfg, v: np.asarray(jax.jit(TransformerLM(cfg).apply)(v, TOKENS)[0])
  np.testing.assert_array_equal(logits(adapted_config, adapted), logits(base, variables))
  # With non-zero B the function changes, and merging gives it back without adapters.
  flat = flatten_dict(adapted["params"])
  rng = np.random.default_rng(2)
  flat = {k: (rng.normal(size=v.shape).astype(np.float32) * 0.1 if k[-1].endswith("_lora_b")
              else v) for k, v in flat.items()}
  from flax.traverse_util import unflatten_dict
  trained = {"params": unflatten_dict(flat)}
  merged_config, merged = merge_lora(adapted_config, trained)
  assert merged_config == base
  assert not any("lora" in k[-1] for k in flatten_dict(merged["params"]))
  assert np.abs(logits(adapted_config, trained) - logits(base, variables)).max() > 1e-2
  np.testing.assert_allclose(logits(base, merged), logits(adapted_config, trained),
                             atol=1e-5, rtol=0)


@pytest.mark.parametrize("shared_base", [False, True], ids=["per_expert_base", "molora"])
def test_adapter_gradients_match_finite_differences(shared_base):
  config = _config(lora_rank=3, activation="gelu", shared_base=shared_base)
  model = TransformerLM(config)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), TOKENS)
  flat = flatten_dict(variables["params"])
  key_b = next(k for k in flat if k[-1] == "w_in_lora_b")
  key_a = next(k for k in flat if k[-1] == "w_out_lora_a")
  rng = np.random.default_rng(3)
  for key in [k for k in flat if k[-1].endswith("_lora_b")]:  # B = 0 would zero A's gradient
    flat[key] = jnp.asarray(rng.normal(size=flat[key].shape) * 0.1, jnp.float32)

  @jax.jit
  def loss(b, a):
    params = dict(flat)
    params[key_b], params[key_a] = b, a
    from flax.traverse_util import unflatten_dict
    logits = model.apply({"params": unflatten_dict(params)}, TOKENS)[0]
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  grads = jax.grad(loss, argnums=(0, 1))(flat[key_b], flat[key_a])
  for argnum, (value, grad) in enumerate(zip((flat[key_b], flat[key_a]), grads)):
    for index in [(0, 0, 0), (1, 2, 1), (3, 1, 2)]:
      step = np.zeros(value.shape, np.float32)
      step[index] = 1e-2
      args = [flat[key_b], flat[key_a]]
      plus, minus = list(args), list(args)
      plus[argnum], minus[argnum] = value + step, value - step
      numeric = (loss(*plus) - loss(*minus)) / 2e-2
      np.testing.assert_allclose(grad[index], numeric, rtol=5e-2, atol=2e-4)
    assert np.abs(np.asarray(grad)).max() > 1e-3


@pytest.fixture(scope="module")
def base_workdir(tmp_path_factory, data_dir):
  base = tmp_path_factory.mktemp("lora_base") / "run"
  train_and_evaluate(experiment_from_config(tiny_config(data_dir=data_dir, train__num_steps=2)),
                     str(base), log=lambda line: None)
  return base


def test_only_adapters_train_and_only_they_get_optimizer_state(base_workdir, data_dir, tmp_path):
  """init_from a trained MoE workdir, add adapters on the command line, train
  only them: every other weight stays bit-identical, and Adam's moments
  cover the adapters alone."""
  config = tiny_config(data_dir=data_dir, train__init_from=str(base_workdir), train__num_steps=4,
                       train__trainable="lora", train__warmup_steps=1)
  config, _ = resolve_model(config, {"model.moe.lora_rank": 4}, str(tmp_path / "ft"))
  train_and_evaluate(experiment_from_config(config), str(tmp_path / "ft"), log=lambda line: None)
  before, after = _restore(base_workdir), _restore(tmp_path / "ft")
  flat_before = flatten_dict(before["params"])
  adapters = {k: v for k, v in flatten_dict(after["params"]).items() if k not in flat_before}
  assert adapters and all(k[-1].endswith(("_lora_a", "_lora_b")) for k in adapters)
  assert any(np.abs(np.asarray(v)).max() > 0 for k, v in adapters.items()
             if k[-1].endswith("_lora_b"))                       # B moved off zero
  for key, value in flatten_dict(after["params"]).items():
    if key in flat_before:
      np.testing.assert_array_equal(np.asarray(value), np.asarray(flat_before[key]), str(key))
  moment_sizes = sum(x.size for x in jax.tree.leaves(after["opt_state"]) if x.ndim >= 1)
  assert moment_sizes == 2 * sum(v.size for v in adapters.values())   # Adam's mu and nu


def test_lora_and_router_also_trains_the_routers():
  params = {"block_0": {"moe": {"router": {"kernel": 1}, "experts": {
      "w_in": 1, "w_in_lora_a": 1, "w_in_lora_b": 1}}, "attention": {"query": {"kernel": 1}}}}
  from moejax.train.optim import trained_labels
  flat = lambda trainable: {"/".join(k): v for k, v in flatten_dict(
      trained_labels(params, trainable)).items()}
  assert flat("lora") == {"block_0/moe/router/kernel": "frozen", "block_0/moe/experts/w_in":
                          "frozen", "block_0/moe/experts/w_in_lora_a": "train",
                          "block_0/moe/experts/w_in_lora_b": "train",
                          "block_0/attention/query/kernel": "frozen"}
  assert flat("lora_and_router")["block_0/moe/router/kernel"] == "train"
  assert set(flat("all").values()) == {"train"}


def _restore(workdir):
  checkpointer = Checkpointer(str(workdir), keep=1, async_save=False)
  try:
    return checkpointer.restore_as_saved()[1]
  finally:
    checkpointer.close()


def test_bad_lora_settings_are_one_line():
  with pytest.raises(ValueError, match=r"lora_rank=40 is invalid: must be <= min\(d_model, "
                     r"d_ff\) = 24"):
    _config(lora_rank=40)
  with pytest.raises(ValueError, match="train.trainable='lora' is invalid: trains LoRA adapters: "
                     "set model.moe.lora_rank"):
    experiment_from_config(tiny_config(train__trainable="lora"))
  with pytest.raises(ValueError, match="train.trainable='everything' is invalid"):
    experiment_from_config(tiny_config(train__trainable="everything"))
  quantized = dataclasses.replace(_config().moe, expert_quantization="int8")
  with pytest.raises(ValueError, match="adapters on quantized experts"):
    dataclasses.replace(quantized, lora_rank=2)
  with pytest.raises(ValueError, match="lora_shared_base=True is invalid: needs lora_rank > 0"):
    _config(shared_base=True)


def test_hf_export_merges_the_adapters(tmp_path):
  """A Mixtral with trained (here: random) adapters exports as a plain
  Mixtral whose transformers logits equal the adapted model's."""
  pytest.importorskip("torch")
  from flax.traverse_util import unflatten_dict
  from transformers import AutoModelForCausalLM
  from hf_models import hf_logits, tiny_hf_model
  from moejax.convert.hf_export import save_hf
  from moejax.convert.hf_import import load_hf
  tiny_hf_model("mixtral").save_pretrained(tmp_path / "hf")
  imported = load_hf(str(tmp_path / "hf"))
  config = dataclasses.replace(imported.config,
                               moe=dataclasses.replace(imported.config.moe, lora_rank=2))
  variables = _adapted(imported.variables, config)
  rng = np.random.default_rng(4)
  flat = {k: (rng.normal(size=v.shape).astype(np.float32) if k[-1].endswith("_lora_b") else v)
          for k, v in flatten_dict(variables["params"]).items()}
  variables = {"params": unflatten_dict(flat)}
  ours = np.asarray(jax.jit(TransformerLM(config).apply)(variables, TOKENS)[0])
  save_hf(str(tmp_path / "out"), config, variables, "mixtral", base=imported.hf_config)
  reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"),
                                                  attn_implementation="eager").eval()
  np.testing.assert_allclose(hf_logits(reloaded, TOKENS), ours, atol=1e-4, rtol=0)
  assert np.abs(ours - np.asarray(jax.jit(TransformerLM(imported.config).apply)(
      imported.variables, TOKENS)[0])).max() > 1e-2


def test_molora_upcycle_starts_as_the_dense_model_on_one_copy_of_its_ffn():
  """MoLoRA: a dense LM upcycled into LoRA experts over its one FFN. The
  experts store the FFN once; the model starts equal to the dense one; with
  trained (here: random) adapters the experts differ, and merging gives E
  plain experts that compute the same."""
  from flax.traverse_util import unflatten_dict
  from moejax.convert.upcycle import upcycle
  dense = ModelConfig(kind="lm", num_layers=2, d_model=32, num_heads=2, dense_d_ff=24,
                      moe_every=0, activation="swiglu", lm=LMConfig(vocab_size=64))
  dense_variables = jax.jit(TransformerLM(dense).init)(jax.random.PRNGKey(0), TOKENS)
  moe = dataclasses.replace(_config(lora_rank=4, shared_base=True).moe,
                            router=RouterConfig(num_experts=4, top_k=2, normalize_top_k=True))
  config, variables = upcycle(dense, dense_variables, moe, rng=jax.random.PRNGKey(1))
  experts = variables["params"]["block_0"]["moe"]["experts"]
  assert experts["w_in"].shape == (1, 32, 24) and experts["w_in_lora_a"].shape == (4, 32, 4)
  dense_ffn = dense_variables["params"]["block_0"]["ffn"]["ffn"]
  np.testing.assert_array_equal(experts["w_in"][0], dense_ffn["w_in"]["kernel"])
  logits = lambda cfg, v: np.asarray(jax.jit(TransformerLM(cfg).apply)(v, TOKENS)[0])
  np.testing.assert_allclose(logits(config, variables), logits(dense, dense_variables),
                             atol=1e-5, rtol=0)
  # A token uses the whole shared FFN and 2 of the 4 experts' adapters.
  from moejax.models.params import active_params
  flat = flatten_dict(variables["params"])
  adapters = sum(v.size for k, v in flat.items() if "lora" in k[-1])
  total = sum(v.size for v in flat.values())
  assert active_params(config, variables["params"]) == total - adapters // 2
  rng = np.random.default_rng(5)
  trained = {**variables, "params": unflatten_dict({
      k: (rng.normal(size=v.shape).astype(np.float32) * 0.1 if k[-1].endswith("_lora_b") else v)
      for k, v in flatten_dict(variables["params"]).items()})}
  adapted = logits(config, trained)
  assert np.abs(adapted - logits(dense, dense_variables)).max() > 1e-2
  merged_config, merged = merge_lora(config, trained)
  assert merged["params"]["block_0"]["moe"]["experts"]["w_in"].shape == (4, 32, 24)
  assert not merged_config.moe.lora_shared_base and not merged_config.moe.lora_rank
  np.testing.assert_allclose(logits(merged_config, merged), adapted, atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match="granularity=2 is invalid: must be 1 with "
                     "moe.lora_shared_base"):
    upcycle(dense, dense_variables, dataclasses.replace(moe, d_ff=12),
            rng=jax.random.PRNGKey(1), granularity=2)


def test_adapters_with_expert_biases_cover_the_matrices_only():
  """use_bias and lora_rank together: adapters on w_in / w_gate / w_out, none
  on the biases, and the adapted layer starts as its base."""
  moe = dataclasses.replace(_config(lora_rank=2).moe, use_bias=True)
  config = dataclasses.replace(_config(lora_rank=2), moe=moe)
  variables = jax.jit(TransformerLM(config).init)(jax.random.PRNGKey(0), TOKENS)
  experts = variables["params"]["block_0"]["moe"]["experts"]
  assert sorted(experts) == sorted(["w_in", "w_gate", "w_out", "b_in", "b_gate", "b_out"] + [
      f"{m}_lora_{ab}" for m in ("w_in", "w_gate", "w_out") for ab in "ab"])
  merged_config, merged = merge_lora(config, variables)
  logits = lambda cfg, v: np.asarray(jax.jit(TransformerLM(cfg).apply)(v, TOKENS)[0])
  np.testing.assert_array_equal(logits(config, variables), logits(merged_config, merged))
