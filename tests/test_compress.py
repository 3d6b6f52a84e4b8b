"""Expert pruning (moejax/compress/pruning.py): properties that break if the
indexing were wrong."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.compress import expert_statistics, keep_most_used, prune_experts
from moejax.compress.merging import group_experts, logit_similarity, merge_experts, router_logits
from moejax.compress.quantize import quantize_experts, weight_bytes
from moejax.grouped_matmul.quantized import dequantize
from moejax.compress.remap import remap_experts
from moejax.config import ROUTER_FAMILIES, MoEConfig, RouterConfig
from moejax.models import ModelConfig, build_model


def _model(use_expert_bias=False, name="top_k", **router):
  router = RouterConfig(**{"name": name, "num_experts": 6, "top_k": 2,
                           "use_expert_bias": use_expert_bias, **router})
  config = ModelConfig(num_layers=2, d_model=32, num_heads=2, dense_d_ff=64, moe_every=1,
                       moe=MoEConfig(router=router, d_model=32, d_ff=16, dispatch="dropless",
                                     activation="swiglu"))
  tokens = jax.random.randint(jax.random.key(1), (4, 16), 0, 256)
  variables = jax.jit(build_model(config).init)(jax.random.key(0), tokens)
  return config, dict(variables), tokens


def test_keeping_every_expert_changes_nothing():
  config, variables, tokens = _model(use_expert_bias=True)
  stats = expert_statistics(config, variables, [tokens], "router_weight")
  assert stats.shape == (2, 6)
  new_config, new_variables = prune_experts(config, variables, keep_most_used(stats, 6))
  assert new_config == config
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(new_variables)):
    np.testing.assert_array_equal(a, b)


def test_pruning_an_expert_calibration_never_selects_leaves_outputs_unchanged():
  """Expert 3 of block 0 and expert 5 of block 1 get an expert bias of -1e4,
  so no token selects them; with top-k weights renormalised over the chosen
  experts, pruning them by calibration frequency keeps the logits."""
  config, variables, tokens = _model(use_expert_bias=True, normalize_top_k=True)
  state = jax.tree.map(lambda x: x, variables["router_state"])
  for block, expert in (("block_0", 3), ("block_1", 5)):
    bias = state[block]["moe"]["router"]["expert_bias"]
    state[block]["moe"]["router"]["expert_bias"] = bias.at[expert].set(-1e4)
  variables = dict(variables, router_state=state)
  stats = expert_statistics(config, variables, [tokens, tokens[::-1]], "frequency")
  assert stats[0, 3] == 0 and stats[1, 5] == 0 and stats.sum() == 2 * 2 * 4 * 16 * 2
  keep = keep_most_used(stats, 5)
  assert 3 not in keep[0] and 5 not in keep[1]
  new_config, new_variables = prune_experts(config, variables, keep)
  assert new_config.moe.router.num_experts == 5
  experts = new_variables["params"]["block_1"]["moe"]["experts"]["w_in"]
  np.testing.assert_array_equal(
      experts, variables["params"]["block_1"]["moe"]["experts"]["w_in"][np.array([0, 1, 2, 3, 4])])
  before, _ = jax.jit(build_model(config).apply)(variables, tokens)
  after, _ = jax.jit(build_model(new_config).apply)(new_variables, tokens)
  np.testing.assert_allclose(after, before, atol=1e-5, rtol=1e-5)


def test_pruning_a_used_expert_changes_outputs_and_keeps_null_columns():
  config, variables, tokens = _model(num_null_experts=2)
  assert variables["params"]["block_0"]["moe"]["router"]["kernel"].shape == (32, 8)
  new_config, new_variables = prune_experts(config, variables, [[0, 2, 4, 5], [1, 2, 3, 4]])
  kernel = variables["params"]["block_0"]["moe"]["router"]["kernel"]
  np.testing.assert_array_equal(new_variables["params"]["block_0"]["moe"]["router"]["kernel"],
                                kernel[:, [0, 2, 4, 5, 6, 7]])
  before, _ = jax.jit(build_model(config).apply)(variables, tokens)
  after, _ = jax.jit(build_model(new_config).apply)(new_variables, tokens)
  assert float(jnp.abs(after - before).max()) > 1e-3


@pytest.mark.parametrize("keep, message", [
    (np.zeros((2, 0), int), "target=0 experts is invalid: must be between 1 and 6"),
    ([[0, 1], [1, 1]], r"keep=\[1, 1\] is invalid: distinct expert indices in \[0, 6\)"),
    ([[0, 6], [1, 2]], r"keep=\[0, 6\] is invalid"),
    ([[0, 1, 2]], r"keep has shape \(1, 3\): expected \[2 MoE layers, experts\]"),
    ([[0], [1]], "1 experts: router.top_k=2 is invalid"),
])
def test_bad_pruning_requests_are_one_line(keep, message):
  config, variables, _ = _model()
  with pytest.raises(ValueError, match=message) as err:
    prune_experts(config, variables, keep)
  assert "\n" not in str(err.value)


def test_bad_targets_and_routers_are_refused():
  with pytest.raises(ValueError, match="target=7 experts is invalid: must be between 1 and 6"):
    keep_most_used(np.ones((2, 6)), 7)
  config, variables, _ = _model()
  hashed = dataclasses.replace(config, moe=dataclasses.replace(
      config.moe, router=dataclasses.replace(config.moe.router, name="hash", top_k=1)))
  with pytest.raises(ValueError, match="router.name=.hash. cannot be pruned or merged"):
    prune_experts(hashed, variables, [[0], [1]])
  with pytest.raises(ValueError, match="statistic='load' is invalid"):
    expert_statistics(config, variables, [], "load")
  with pytest.raises(ValueError, match="calibration data is empty"):
    expert_statistics(config, variables, [], "frequency")


def _duplicate_expert(variables, source, copy):
  """Expert `copy` of every MoE block made identical to `source`: weights,
  router column."""
  params = jax.tree.map(lambda x: x, variables["params"])
  for block in ("block_0", "block_1"):
    moe = params[block]["moe"]
    moe["experts"] = {k: v.at[copy].set(v[source]) for k, v in moe["experts"].items()}
    kernel = moe["router"]["kernel"]
    moe["router"]["kernel"] = kernel.at[:, copy].set(kernel[:, source])
  return dict(variables, params=params)


def test_merging_identical_experts_is_exact_and_picks_them_first():
  config, variables, tokens = _model(num_null_experts=1)
  variables = _duplicate_expert(variables, source=1, copy=4)
  logits = router_logits(config, variables, [tokens])
  assert [x.shape for x in logits] == [(64, 6), (64, 6)]  # null column dropped
  similarity = logit_similarity(logits)
  np.testing.assert_allclose(similarity[:, 1, 4], 1.0, rtol=1e-6)
  groups = group_experts(similarity, 5)
  assert groups == [[[0], [1, 4], [2], [3], [5]]] * 2
  frequency = expert_statistics(config, variables, [tokens], "frequency")
  new_config, merged = merge_experts(config, variables, groups, frequency)
  assert new_config.moe.router.num_experts == 5
  for block in ("block_0", "block_1"):
    old, new = variables["params"][block]["moe"], merged["params"][block]["moe"]
    for name, value in old["experts"].items():
      np.testing.assert_array_equal(new["experts"][name], np.asarray(value)[[0, 1, 2, 3, 5]])
    kernel = np.asarray(old["router"]["kernel"])
    np.testing.assert_array_equal(new["router"]["kernel"], kernel[:, [0, 1, 2, 3, 5, 6]])


def test_merging_weights_members_by_frequency():
  config, variables, tokens = _model()
  frequency = np.array([[1.0, 3.0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
  groups = [[[0, 1], [2], [3], [4], [5]], [[0], [1], [2], [3, 4], [5]]]
  _, merged = merge_experts(config, variables, groups, frequency)
  w = np.asarray(variables["params"]["block_0"]["moe"]["experts"]["w_in"])
  np.testing.assert_allclose(merged["params"]["block_0"]["moe"]["experts"]["w_in"][0],
                             0.25 * w[0] + 0.75 * w[1], rtol=1e-5, atol=1e-7)
  w = np.asarray(variables["params"]["block_1"]["moe"]["experts"]["w_in"])
  np.testing.assert_allclose(merged["params"]["block_1"]["moe"]["experts"]["w_in"][3],
                             0.5 * w[3] + 0.5 * w[4], rtol=1e-5, atol=1e-7)  # unused: uniform


def test_bad_merge_groups_are_one_line():
  config, variables, _ = _model()
  with pytest.raises(ValueError, match=r"groups=\[\[0, 1\], \[2, 3, 4\]\] of MoE layer 0 are "
                     "invalid: a partition of the 6 experts into 2 groups expected"):
    merge_experts(config, variables, [[[0, 1], [2, 3, 4]]] * 2, np.ones((2, 6)))
  with pytest.raises(ValueError, match="target=0 experts is invalid"):
    group_experts(np.zeros((2, 6, 6)), 0)


@pytest.mark.parametrize("qtype, group", [("int8", 0), ("int8", 8), ("int4", 0), ("int4", 8)])
def test_quantized_experts_round_trip_within_half_a_step(qtype, group):
  """Every dequantized weight is within half a quantization step (its scale
  / 2) of the float weight, per channel and group; the layer runs on them."""
  config, variables, tokens = _model()
  new_config, quantized = quantize_experts(config, variables, qtype, group)
  assert new_config.moe.expert_quantization == qtype
  for block in ("block_0", "block_1"):
    experts = quantized["params"][block]["moe"]["experts"]
    assert set(experts) == {"w_in_q", "w_in_scale", "w_gate_q", "w_gate_scale", "w_out_q",
                            "w_out_scale"}
    for name in ("w_in", "w_gate", "w_out"):
      w = np.asarray(variables["params"][block]["moe"]["experts"][name])
      q, scale = experts[f"{name}_q"], experts[f"{name}_scale"]
      assert q.dtype == np.int8 and scale.shape == (6, w.shape[1] // group if group else 1,
                                                    w.shape[2])
      bound = {"int8": 127, "int4": 7}[qtype]
      assert np.abs(q).max() <= bound + 1
      step = np.repeat(scale, w.shape[1] // scale.shape[1], axis=1)
      restored = np.asarray(dequantize(jnp.asarray(q), jnp.asarray(scale), qtype, jnp.float32))
      assert np.all(np.abs(restored - w) <= step / 2 + 1e-7)
  before, _ = jax.jit(build_model(config).apply)(variables, tokens)
  after, _ = jax.jit(build_model(new_config).apply)(quantized, tokens)
  # Mean over logits: a max can come from one token whose top-2 experts flip.
  gap = float(jnp.abs(after - before).mean() / jnp.abs(before).mean())
  assert 0 < gap < (0.01 if qtype == "int8" else 0.1), gap
  assert weight_bytes(new_config, quantized) < weight_bytes(config, variables)


@pytest.mark.parametrize("qtype,group", [("int8", 0), ("int4", 8)])
def test_quantized_experts_dequantize_per_expert_inside_the_blocked_loop(qtype, group):
  """The blocked expert loop dequantizes one expert at a time: the same
  outputs as the whole float bank through the einsum reference (GLU + biases,
  an empty expert, groups straddling 8-row blocks), and no float [E, d, f]
  bank appears in the computation."""
  from moejax.expert_batch import ExpertBatch
  from moejax.experts import ExpertBank, expert_ffn
  bank = ExpertBank(num_experts=4, d_model=16, d_ff=32, activation="swiglu", use_bias=True,
                    gmm_backend="blocked", gmm_block_size=8, quantization=qtype,
                    quantization_group=group)
  sizes = jnp.array([5, 0, 13, 9], jnp.int32)             # expert 1 empty
  x = jax.random.normal(jax.random.key(0), (int(sizes.sum()) + 3, 16))   # + padding rows
  batch = ExpertBatch(x=x, group_sizes=sizes)
  variables = jax.jit(bank.init)(jax.random.key(1), batch)
  keys = iter(jax.random.split(jax.random.key(2), 16))
  params = {name: (jax.random.randint(next(keys), v.shape, -7, 8).astype(jnp.int8)
                   if name.endswith("_q") else
                   jax.random.uniform(next(keys), v.shape, minval=0.01, maxval=0.05))
            for name, v in variables["params"].items()}
  per_tile = jax.jit(bank.apply)({"params": params}, batch).x
  floats = bank.apply({"params": params}, method=lambda m: m.weights())
  assert floats["w_in"].dtype == jnp.float32 and floats["w_in"].shape == (4, 16, 32)
  want = expert_ffn(floats, batch, "swiglu", "einsum").x
  np.testing.assert_allclose(per_tile, want, rtol=1e-5, atol=1e-5)
  shapes = [(v.aval.shape, v.aval.dtype) for eqn in jax.make_jaxpr(
      lambda p: bank.apply({"params": p}, batch).x)(params).jaxpr.eqns for v in eqn.outvars]
  assert ((4, 16, 32), jnp.float32) not in shapes and ((4, 32, 16), jnp.float32) not in shapes


def test_quantized_model_saves_loads_and_is_refused_for_training(tmp_path):
  from moejax.convert.model_dir import load_model_dir, save_model_dir
  from moejax.train.config import experiment_from_config
  from tiny_configs import tiny_config
  config, variables, tokens = _model()
  new_config, quantized = quantize_experts(config, variables, "int8")
  save_model_dir(str(tmp_path / "q"), new_config, quantized)
  loaded_config, loaded, _ = load_model_dir(str(tmp_path / "q"))
  assert loaded_config == new_config
  np.testing.assert_array_equal(jax.jit(build_model(loaded_config).apply)(loaded, tokens)[0],
                                jax.jit(build_model(new_config).apply)(quantized, tokens)[0])
  with pytest.raises(ValueError, match="model.moe.expert_quantization='int8' is invalid: "
                     "quantized experts cannot be trained"):
    experiment_from_config(tiny_config(model__moe__expert_quantization="int8"))


def test_bad_quantization_requests_are_one_line():
  config, variables, _ = _model()
  with pytest.raises(ValueError, match="quantizing to int4: expert_quantization_group=12 is "
                     "invalid: must divide d_model=32 and d_ff=16"):
    quantize_experts(config, variables, "int4", 12)
  with pytest.raises(ValueError, match="qtype='int2' is invalid"):
    quantize_experts(config, variables, "int2")
  q_config, quantized = quantize_experts(config, variables, "int8")
  with pytest.raises(ValueError, match="already quantized"):
    quantize_experts(q_config, quantized, "int4")


def _compress(*args):
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, os.path.join(root, "experiments", "compress.py"), *args],
                        capture_output=True, text=True, cwd=root, timeout=600, env=env)


def test_compress_binary_prunes_merges_quantizes_and_the_result_generates(tmp_path, data_dir):
  """The binary end to end on a 6-expert model folder: a row per step with
  the expert count and weight bytes going down, a model folder that loads
  and generates, and one-line refusals that write nothing."""
  from moejax.convert.model_dir import save_model_dir
  from moejax.train.sources import load_any
  from moejax.generate import generate
  config, variables, _ = _model()
  save_model_dir(str(tmp_path / "model"), config, variables)
  data = [f"--data_dir={data_dir}", "--data=pydoc_bytes", "--seq_len=16", "--batch_size=4",
          "--calibration_batches=2", "--eval_batches=2"]
  out = _compress(f"--src={tmp_path}/model", f"--out={tmp_path}/small", "--prune_to=4",
                  "--merge_to=3", "--quantize=int8", f"--json_out={tmp_path}/rows.json", *data)
  assert out.returncode == 0, out.stderr
  import json
  rows = json.loads((tmp_path / "rows.json").read_text())
  assert [r["experts"] for r in rows] == [6, 4, 3, 3]
  assert rows[1]["step"] == "prune to 4 (frequency)" and rows[3]["step"] == "int8 (per channel)"
  sizes = [r["weight_bytes"] for r in rows]
  assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4
  # Still top-2 experts per token: only the 2 layers x 2 router columns of d 32 go.
  assert rows[1]["active_params"] == rows[0]["active_params"] - 2 * 2 * 32
  assert all(np.isfinite(r["eval_loss"]) for r in rows)
  assert "| int8 (per channel) | 3 |" in out.stdout
  small_config, small, _ = load_any(str(tmp_path / "small"))
  assert small_config.moe.router.num_experts == 3
  assert small_config.moe.expert_quantization == "int8"
  tokens = generate(build_model(small_config), small, jnp.array([[1, 2, 3]]),
                    rng=jax.random.key(0), max_new_tokens=4)
  assert tokens.shape == (1, 7)

  for args, code, message in (
      (["--prune_to=7"], 2, "error: --prune_to=7 is invalid: the model has 6 experts"),
      (["--quantize=int4", "--group_size=5"], 1,
       "error: quantizing to int4: expert_quantization_group=5 is invalid: must divide"),
      (["--prune_to=4", "--data=no_such_corpus"], 1, "error: "),
      ([], 2, "error: nothing to do"),
  ):
    bad = _compress(f"--src={tmp_path}/model", f"--out={tmp_path}/bad", *data, *args)
    assert bad.returncode == code, bad.stderr
    assert bad.stderr.startswith(message) and len(bad.stderr.strip().splitlines()) == 1, (
        bad.stderr)
    assert not (tmp_path / "bad").exists()


def test_study_compresses_every_way_and_plots(tmp_path):
  from moejax.compress.pipeline import STUDY, plot_study, run_study
  config, variables, tokens = _model()
  batch = {"inputs": np.asarray(tokens[:, :-1]), "targets": np.asarray(tokens[:, 1:]),
           "mask": np.ones((4, 15), np.float32)}
  rows = run_study(config, variables, [tokens], [batch], int4_group=8, log=lambda _: None)
  assert [r["method"] for r in rows] == ["original"] + [
      name.replace("grouped", "groups of 8") for name, _ in STUDY]
  experts = {r["method"]: r["experts"] for r in rows}
  assert (experts["prune to 75%"], experts["merge to 50%"], experts["prune to 25%"]) == (4, 3, 2)
  assert experts["int4 (groups of 8)"] == 6
  size = {r["method"]: r["weight_bytes"] for r in rows}
  assert size["int4 (groups of 8)"] < size["int8"] < size["original"]
  assert size["prune to 75% + int8"] < size["int8"]
  plot_study(rows, str(tmp_path / "plot.png"))
  assert (tmp_path / "plot.png").stat().st_size > 1000


_FAMILY_FIELDS = {"expert_choice": {"capacity_factor": 2.0}, "sinkhorn": {"top_k": 1}}


@pytest.mark.parametrize("name", sorted(n for n, f in ROUTER_FAMILIES.items() if f.remappable))
def test_every_remappable_router_is_unchanged_by_reordering_its_experts(name):
  """RouterFamily.remappable promises that a router's only per-expert state
  is what remap_experts moves: reversing the expert order then changes no
  output (a family with other per-expert state would route differently)."""
  config, variables, tokens = _model(name=name, **_FAMILY_FIELDS.get(name, {}))
  reverse = np.eye(6)[::-1][None].repeat(len(config.moe_layers), 0)
  new_config, new_variables = remap_experts(config, variables, reverse)
  assert new_config == config
  w_in = variables["params"]["block_0"]["moe"]["experts"]["w_in"]
  assert not np.array_equal(new_variables["params"]["block_0"]["moe"]["experts"]["w_in"], w_in)
  before, _ = jax.jit(build_model(config).apply)(variables, tokens)
  after, _ = jax.jit(build_model(new_config).apply)(new_variables, tokens)
  np.testing.assert_allclose(after, before, atol=1e-5, rtol=1e-5)
