"""HuggingFace import / export: logit parity with transformers for every
family, router choices, both expert layouts, sharded checkpoints, and one-line
errors for checkpoints that cannot be converted."""

import dataclasses
import functools
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from hf_models import MOE_FAMILIES, VOCAB, hf_logits, hf_router_choices, tiny_hf_model
from moejax.convert import (CheckpointFormatError, CheckpointMismatchError,
                            UnsupportedModelError, load_hf, read_safetensors, write_safetensors)
from moejax.convert.hf_export import save_hf
from moejax.models import TransformerLM
from moejax.moe import Router

IDS = np.random.default_rng(0).integers(0, VOCAB, size=(2, 13))


def _our_logits(model, ids=IDS):
  logits, _ = jax.jit(TransformerLM(model.config).apply)(model.variables, jnp.asarray(ids))
  return np.asarray(logits)


def _our_router_choices(model, ids=IDS):
  apply = functools.partial(
      TransformerLM(model.config).apply,
      capture_intermediates=lambda mdl, _: isinstance(mdl, Router), mutable=["intermediates"])
  _, state = jax.jit(apply)(model.variables, jnp.asarray(ids))
  found = {}
  for block, tree in state.get("intermediates", {}).items():
    out = tree["moe"]["router"]["__call__"][0]
    found[int(block.split("_")[1])] = np.sort(np.asarray(out.routing.expert_index), axis=-1)
  return found


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """{family: (torch model, folder)} saved with save_pretrained (safetensors)."""
  root = tmp_path_factory.mktemp("hf")
  out = {}
  for family in MOE_FAMILIES + ["llama"]:
    model = tiny_hf_model(family)
    model.save_pretrained(root / family)
    out[family] = (model, str(root / family))
  return out


@pytest.mark.parametrize("family", MOE_FAMILIES + ["llama"])
def test_import_matches_transformers_logits_and_router_choices(saved, family):
  torch_model, folder = saved[family]
  model = load_hf(folder)
  ref = hf_logits(torch_model, IDS)
  assert np.abs(ref).max() > 1.0  # logits big enough that a wrong mapping shows
  np.testing.assert_allclose(_our_logits(model), ref, atol=1e-4, rtol=0)
  ours, theirs = _our_router_choices(model), hf_router_choices(torch_model, IDS)
  assert sorted(ours) == sorted(theirs) == list(model.config.moe_layers)
  for layer in theirs:
    np.testing.assert_array_equal(ours[layer], theirs[layer], err_msg=f"layer {layer}")


def test_family_specifics_reach_the_config(saved):
  qwen3 = load_hf(saved["qwen3_moe"][1]).config
  assert qwen3.moe_layers == (0, 2) and qwen3.qk_norm == "head" and qwen3.head_size == 16
  ds = load_hf(saved["deepseek_v3"][1]).config
  assert ds.attention == "mla" and ds.first_dense_layers == 1
  r = ds.moe.router
  assert (r.score_fn, r.num_expert_groups, r.top_k_groups, r.routed_scaling_factor) == (
      "sigmoid", 4, 2, 2.5) and r.use_expert_bias
  assert load_hf(saved["phimoe"][1]).config.moe.router.name == "sparsemixer"


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "deepseek_v3"])
def test_fused_expert_layout_imports_the_same(saved, family, tmp_path):
  """transformers 5 keeps experts fused in memory (gate_up_proj / down_proj);
  a checkpoint saved that way imports to the same model."""
  torch_model, folder = saved[family]
  state = {k: v.contiguous() for k, v in torch_model.state_dict().items()}
  assert any(k.endswith("experts.gate_up_proj") for k in state)
  shutil.copy(os.path.join(folder, "config.json"), tmp_path / "config.json")
  save_file(state, str(tmp_path / "model.safetensors"))
  fused, per_expert = load_hf(str(tmp_path)), load_hf(folder)
  for a, b in zip(jax.tree.leaves(fused.variables), jax.tree.leaves(per_expert.variables)):
    np.testing.assert_array_equal(a, b)


# GraniteMoE, gpt-oss and DBRX store their experts fused only: one layout.
@pytest.mark.parametrize("family,layout", [
    (family, layout) for family in ("mixtral", "deepseek_v2", "deepseek_v3", "phimoe",
                                    "qwen2_moe", "ernie4_5_moe")
    for layout in ("per_expert", "fused")] + [
        (family, "fused") for family in ("granitemoe", "gpt_oss", "dbrx")])
def test_export_round_trip_through_transformers(saved, family, layout, tmp_path):
  """Export (sharded, both layouts) loads in transformers with the original
  logits, and re-imports to identical variables."""
  assert_export_round_trip(*saved[family], family, layout, str(tmp_path / "exported"))


def assert_export_round_trip(torch_model, folder, family, layout, out):
  """Imports `folder`, exports it as `family` (sharded, `layout`) to `out`:
  transformers loads it with torch_model's logits and it re-imports to
  identical variables."""
  model = load_hf(folder)
  save_hf(out, model.config, model.variables, family, base=model.hf_config, layout=layout,
          max_shard_bytes=16_000)
  assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
  reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
  np.testing.assert_allclose(hf_logits(reloaded, IDS), hf_logits(torch_model, IDS),
                             atol=1e-5, rtol=0)
  again = load_hf(out)
  for a, b in zip(jax.tree.leaves(again.variables), jax.tree.leaves(model.variables)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("family,rope,max_positions", [
    ("mixtral", dict(rope_type="linear", factor=2.0), 128),
    # Head width 8: wavelengths 6.3, 63, 628, 6283 fall in the short (kept),
    # medium (blended) and long (scaled) bands of a 64-position original context.
    ("mixtral", dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                     original_max_position_embeddings=64), 512),
    # A 16-position original context: the ramp runs over the middle channel pairs;
    # the attention factor is derived (0.1 ln 4 + 1).
    ("mixtral", dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16,
                     beta_fast=8.0, beta_slow=1.0), 64),
    # DeepSeek-V3's form: mscale = mscale_all_dim, which moves the factor into MLA's
    # softmax scale; truncate=False keeps the ramp's ends fractional.
    ("deepseek_v3", dict(rope_type="yarn", factor=8.0, original_max_position_embeddings=16,
                         beta_fast=8.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0,
                         truncate=False), 128),
    ("deepseek_v3", dict(rope_type="yarn", factor=8.0, original_max_position_embeddings=16,
                         mscale=0.707, mscale_all_dim=1.0), 128),
    # The factor (4) and the attention factor come from the two contexts; 40
    # positions use the long factors, 12 the short ones.
    ("mixtral", dict(rope_type="longrope", original_max_position_embeddings=16,
                     long_factor=[1.0, 2.0, 4.0, 8.0], short_factor=[1.0, 1.2, 1.5, 2.0]), 64),
    # Dynamic NTK past a 16-position context: 40 positions grow the base.
    ("mixtral", dict(rope_type="dynamic", factor=2.0), 16),
], ids=["linear", "llama3", "yarn", "yarn_deepseek", "yarn_deepseek_mscale", "longrope",
        "dynamic"])
def test_rope_scaling_imports_and_exports_with_logit_parity(family, rope, max_positions,
                                                           tmp_path):
  import dataclasses
  # transformers' yarn reads head_dim, which Mixtral leaves None unless given.
  torch_model = tiny_hf_model(family, rope_parameters={**rope, "rope_theta": 10000.0},
                              max_position_embeddings=max_positions,
                              **({"head_dim": 8} if family == "mixtral" else {}))
  torch_model.save_pretrained(tmp_path / "hf")
  model = load_hf(str(tmp_path / "hf"))
  assert model.config.lm.rope_scaling == rope["rope_type"]
  assert model.config.lm.rope_factor == rope.get("factor", max_positions / 16)
  ids = np.random.default_rng(1).integers(0, VOCAB, size=(2, 40))  # positions up to 39
  ref = hf_logits(torch_model, ids)
  np.testing.assert_allclose(_our_logits(model, ids), ref, atol=1e-4, rtol=0)
  if rope["rope_type"] == "longrope":   # within the original context: the short factors
    np.testing.assert_allclose(_our_logits(model, ids[:, :12]), hf_logits(torch_model,
                                                                           ids[:, :12]),
                               atol=1e-4, rtol=0)
  unscaled = dataclasses.replace(model.config, lm=dataclasses.replace(model.config.lm,
                                                                      rope_scaling="none"))
  assert np.abs(_our_logits(dataclasses.replace(model, config=unscaled), ids) - ref).max() > 1e-2
  save_hf(str(tmp_path / "out"), model.config, model.variables, family, base=model.hf_config)
  reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"),
                                                  attn_implementation="eager").eval()
  np.testing.assert_allclose(hf_logits(reloaded, ids), ref, atol=1e-5, rtol=0)


def test_phimoe_longrope_within_its_original_context(tmp_path):
  """Phi-3.5-MoE's form (short_mscale = long_mscale). transformers' PhiMoE
  applies the short factors at every length (its rotary recomputes them
  without the length), the standard LongRoPE the long ones past the original
  context: parity is checked where the two agree, inside it."""
  rope = dict(rope_type="longrope", original_max_position_embeddings=16, rope_theta=10000.0,
              long_factor=[1.0, 2.0, 4.0, 8.0], short_factor=[1.0, 1.2, 1.5, 2.0],
              short_mscale=1.1, long_mscale=1.1)
  torch_model = tiny_hf_model("phimoe", rope_parameters=rope, max_position_embeddings=64)
  torch_model.save_pretrained(tmp_path / "hf")
  model = load_hf(str(tmp_path / "hf"))
  assert model.config.lm.rope_attention_factor == 1.1
  ids = np.random.default_rng(1).integers(0, VOCAB, size=(2, 12))
  np.testing.assert_allclose(_our_logits(model, ids), hf_logits(torch_model, ids), atol=1e-4,
                             rtol=0)
  save_hf(str(tmp_path / "out"), model.config, model.variables, "phimoe", base=model.hf_config)
  assert load_hf(str(tmp_path / "out")).config == model.config
  with pytest.raises(UnsupportedModelError, match="long_mscale=1.3 .* only long_mscale = "
                     "short_mscale"):
    load_hf(_copy_without(str(tmp_path / "hf"), tmp_path / "mscale", config_update={
        "rope_parameters": {**rope, "long_mscale": 1.3}}))


def test_export_refuses_what_the_family_cannot_express(saved, tmp_path):
  model = load_hf(saved["qwen3_moe"][1])
  # Qwen3-MoE's per-head q/k norms and its dense block: no Mixtral has them.
  with pytest.raises(UnsupportedModelError, match=r"^model\.\S+=\S+ cannot be exported as "
                                                  r"mixtral: that family gives"):
    save_hf(str(tmp_path / "x"), model.config, model.variables, "mixtral")
  assert not os.path.exists(tmp_path / "x")


def test_export_takes_a_ds_moe_model_and_refuses_moe_plus_plus_experts(saved, tmp_path):
  """DS-MoE's dense training does not change what the weights compute at
  inference, so a Mixtral trained that way exports as Mixtral; copy experts
  have no HF counterpart."""
  import dataclasses
  model = load_hf(saved["mixtral"][1])
  moe, router = model.config.moe, model.config.moe.router
  with_router = lambda **r: dataclasses.replace(model.config, moe=dataclasses.replace(
      moe, router=dataclasses.replace(router, **r)))
  save_hf(str(tmp_path / "ds"), with_router(dense_training=True), model.variables, "mixtral")
  assert load_hf(str(tmp_path / "ds")).config == model.config
  with pytest.raises(UnsupportedModelError, match=r"^model\.moe\.router\.num_copy_experts=1 "
                                                  r"cannot be exported as mixtral"):
    save_hf(str(tmp_path / "pp"), with_router(num_copy_experts=1), model.variables, "mixtral")
  assert not os.path.exists(tmp_path / "pp")


def test_gpt_oss_and_dbrx_options_outside_the_parity_tests_are_refused(saved, tmp_path):
  oss, dbrx = saved["gpt_oss"][1], saved["dbrx"][1]
  with pytest.raises(UnsupportedModelError, match=r"swiglu_limit, swiglu_alpha=\(5.0, 1.702\)"):
    load_hf(_copy_without(oss, tmp_path / "limit", config_update={"swiglu_limit": 5.0}))
  with pytest.raises(UnsupportedModelError, match="quantization_config.quant_method='bnb'"):
    load_hf(_copy_without(oss, tmp_path / "bnb", config_update={
        "quantization_config": {"quant_method": "bnb"}}))
  with open(f"{dbrx}/config.json") as f:
    ffn = json.load(f)["ffn_config"]
  with pytest.raises(UnsupportedModelError, match="moe_normalize_expert_weights=2.0"):
    load_hf(_copy_without(dbrx, tmp_path / "p2", config_update={
        "ffn_config": {**ffn, "moe_normalize_expert_weights": 2.0}}))
  # Mixed windowed and full layers, in a family whose transformers code ignores layer_types.
  with pytest.raises(UnsupportedModelError, match="sliding-window attention must be on every"):
    load_hf(_copy_without(saved["mixtral"][1], tmp_path / "mixed", config_update={
        "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]}))
  mixtral = load_hf(saved["mixtral"][1])  # RMSNorm: DBRX's norms are LayerNorms
  with pytest.raises(UnsupportedModelError, match=r"^model\.norm='rms' cannot be exported as "
                                                  r"dbrx: that family gives 'layer_no_bias'"):
    save_hf(str(tmp_path / "x"), mixtral.config, mixtral.variables, "dbrx")


def test_gpt_oss_mxfp4_experts_import_with_parity(tmp_path):
  """A gpt-oss checkpoint as released: experts as MXFP4 blocks and scales.
  The reference model holds transformers' own dequantization of them."""
  from transformers.integrations.mxfp4 import convert_moe_packed_tensors
  torch_model = tiny_hf_model("gpt_oss", intermediate_size=32)   # whole 32-channel groups
  rng = np.random.default_rng(0)
  state = {k: v.contiguous() for k, v in torch_model.state_dict().items()}
  packed = {}
  for name in [k for k in state if k.endswith(("gate_up_proj", "down_proj"))]:
    e, d_in, d_out = state[name].shape
    blocks = rng.integers(0, 256, size=(e, d_out, d_in // 32, 16), dtype=np.uint8)
    scales = rng.integers(124, 128, size=(e, d_out, d_in // 32), dtype=np.uint8)
    state[name] = convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales),
                                             dtype=torch.float32)
    packed.update({f"{name}_blocks": torch.from_numpy(blocks),
                   f"{name}_scales": torch.from_numpy(scales)})
  torch_model.load_state_dict(state)
  torch_model.config.save_pretrained(tmp_path)
  with open(tmp_path / "config.json") as f:
    config = json.load(f)
  config["quantization_config"] = {"quant_method": "mxfp4"}
  with open(tmp_path / "config.json", "w") as f:
    json.dump(config, f)
  save_file({**{k: v for k, v in state.items() if not k.endswith(("gate_up_proj", "down_proj"))},
             **packed}, str(tmp_path / "model.safetensors"))
  model = load_hf(str(tmp_path))
  np.testing.assert_allclose(_our_logits(model), hf_logits(torch_model, IDS), atol=1e-4, rtol=0)
  # The export is float, and says so.
  save_hf(str(tmp_path / "float"), model.config, model.variables, "gpt_oss", base=model.hf_config)
  with open(tmp_path / "float" / "config.json") as f:
    assert "quantization_config" not in json.load(f)
  from moejax.convert.mxfp4 import MXFP4FormatError, dequantize_checkpoint
  blocks = np.zeros((1, 2, 1, 16), np.uint8)
  with pytest.raises(MXFP4FormatError, match="has 'w_blocks' but no 'w_scales'"):
    dequantize_checkpoint({"w_blocks": blocks})
  with pytest.raises(MXFP4FormatError,
                     match=r"w: MXFP4 needs uint8 .* got float32 \[1, 2, 1, 16\]"):
    dequantize_checkpoint({"w_blocks": blocks.astype(np.float32),
                           "w_scales": np.zeros((1, 2, 1), np.uint8)})


def _copy_without(folder, dst, drop=None, config_update=None):
  shutil.copytree(folder, dst)
  if drop:
    tensors = {k: np.asarray(v) for k, v in read_safetensors(f"{folder}/model.safetensors").items()
               if k != drop}
    write_safetensors(f"{dst}/model.safetensors", tensors)
  if config_update:
    with open(f"{dst}/config.json") as f:
      config = json.load(f)
    config.update(config_update)
    with open(f"{dst}/config.json", "w") as f:
      json.dump(config, f)
  return str(dst)


def test_bad_checkpoints_fail_with_one_clear_line(saved, tmp_path):
  folder = saved["mixtral"][1]
  name = "model.layers.1.block_sparse_moe.experts.3.w2.weight"
  with pytest.raises(CheckpointMismatchError, match=f"no tensor '{name}'"):
    load_hf(_copy_without(folder, tmp_path / "missing", drop=name))
  with pytest.raises(UnsupportedModelError, match="model_type='gpt2' is not supported"):
    load_hf(_copy_without(folder, tmp_path / "unknown", config_update={"model_type": "gpt2"}))
  with pytest.raises(CheckpointMismatchError,
                     match=r"'model.layers.0.self_attn.q_proj.weight' has shape \(32, 32\); "
                           r"config.json implies \(24, 32\)"):
    load_hf(_copy_without(folder, tmp_path / "shape", config_update={"head_dim": 6}))
  with pytest.raises(UnsupportedModelError, match="rope_type='proportional'"):
    load_hf(_copy_without(folder, tmp_path / "rope", config_update={
        "rope_parameters": {"rope_type": "proportional", "rope_theta": 1e4, "factor": 4.0}}))
  pickled = tmp_path / "pickled"
  pickled.mkdir()
  shutil.copy(f"{folder}/config.json", pickled / "config.json")
  torch.save({"w": torch.zeros(2)}, pickled / "pytorch_model.bin")
  with pytest.raises(CheckpointFormatError, match=r"pytorch_model\.bin .*safetensors only.*"
                                                  r"save_pretrained"):
    load_hf(str(pickled))
  with pytest.raises(CheckpointFormatError, match="PyTorch pickle checkpoint"):
    read_safetensors(str(pickled / "pytorch_model.bin"))
  for err in (CheckpointFormatError, CheckpointMismatchError, UnsupportedModelError):
    assert issubclass(err, ValueError)


def test_safetensors_writer_is_read_by_the_reference_library(tmp_path):
  from safetensors.numpy import load_file
  import ml_dtypes
  tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
             "b": np.array([1.5, -2], dtype=ml_dtypes.bfloat16), "c": np.array([3], np.int64)}
  write_safetensors(str(tmp_path / "t.safetensors"), tensors)
  theirs = load_file(str(tmp_path / "t.safetensors"))
  ours = read_safetensors(str(tmp_path / "t.safetensors"))
  for key, value in tensors.items():
    np.testing.assert_array_equal(np.asarray(ours[key]), value)
    if key != "b":  # safetensors.numpy has no bfloat16
      np.testing.assert_array_equal(theirs[key], value)


def test_olmoe_clip_qkv_imports_and_exports_with_parity(tmp_path):
  """OLMoE clips its normed queries and keys and its values at clip_qkv (here
  0.5, well inside their range)."""
  torch_model = tiny_hf_model("olmoe", clip_qkv=0.5)
  torch_model.save_pretrained(tmp_path / "hf")
  model = load_hf(str(tmp_path / "hf"))
  assert model.config.clip_qkv == 0.5
  np.testing.assert_allclose(_our_logits(model), hf_logits(torch_model, IDS), atol=1e-4, rtol=0)
  unclipped = dataclasses.replace(model, config=dataclasses.replace(model.config, clip_qkv=None))
  assert np.abs(_our_logits(unclipped) - _our_logits(model)).max() > 1e-2
  save_hf(str(tmp_path / "out"), model.config, model.variables, "olmoe", base=model.hf_config)
  reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"),
                                                  attn_implementation="eager").eval()
  np.testing.assert_allclose(hf_logits(reloaded, IDS), hf_logits(torch_model, IDS), atol=1e-5,
                             rtol=0)


@pytest.mark.parametrize("family", ["llama", "qwen3_moe", "olmoe", "deepseek_v3"])
def test_attention_biases_import_with_parity(family, tmp_path):
  """attention_bias=True puts biases on q/k/v *and* o_proj (and DeepSeek's
  kv_a projection, whose bias needs the same RoPE channel order as its weight);
  each used to be dropped or mis-ordered with exit 0."""
  torch_model = tiny_hf_model(family, attention_bias=True)
  torch_model.save_pretrained(tmp_path)
  names = {k for k in torch_model.state_dict() if k.endswith("_proj.bias")}
  assert any("o_proj" in n for n in names)
  ref = hf_logits(torch_model, IDS)
  np.testing.assert_allclose(_our_logits(load_hf(str(tmp_path))), ref, atol=1e-4, rtol=0)


def _with_extra_tensor(folder, dst, name):
  shutil.copytree(folder, dst)
  tensors = {k: np.asarray(v) for k, v in read_safetensors(f"{folder}/model.safetensors").items()}
  tensors[name] = np.ones(3, np.float32)
  os.remove(f"{dst}/model.safetensors")
  write_safetensors(f"{dst}/model.safetensors", tensors)
  return str(dst)


def test_unused_checkpoint_tensor_is_an_error_except_the_allow_list(saved, tmp_path):
  extra = "model.layers.0.self_attn.o_proj.bias"
  with pytest.raises(CheckpointMismatchError,
                     match=rf"tensor '{extra}' \(1 in all\) is not used by the moejax model"):
    load_hf(_with_extra_tensor(saved["mixtral"][1], tmp_path / "a", extra))
  # DeepSeek-V3's multi-token-prediction layer (index num_hidden_layers) is left out.
  folder = _with_extra_tensor(saved["deepseek_v3"][1], tmp_path / "b",
                              "model.layers.3.eh_proj.weight")
  with pytest.warns(UserWarning, match="take no part in the forward pass"):
    assert load_hf(folder).unused == ["model.layers.3.eh_proj.weight"]


@pytest.mark.parametrize("update,expected", [
    ({"num_hidden_layers": 1_000_000}, "num_hidden_layers=1000000, but the checkpoint has no "
                                       "tensors of layer 2"),
    ({"num_local_experts": 1_000_000_000}, "gives 1000000000 experts per MoE layer, but layer 0"),
    ({"vocab_size": 10**12}, "vocab_size=1000000000000, hidden_size=32 imply"),
])
def test_absurd_config_sizes_are_refused_before_building(saved, tmp_path, update, expected):
  folder = _copy_without(saved["mixtral"][1], tmp_path / "absurd", config_update=update)
  with pytest.raises(CheckpointMismatchError, match=re.escape(expected)):
    load_hf(folder)


def _raw_safetensors(path, header, data=b""):
  blob = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(len(blob).to_bytes(8, "little") + blob + data)
  return str(path)


@pytest.mark.parametrize("header,data,expected", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, b"\0" * 8, "expected usize"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "invalid offset"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, "not fully covered"),
    ({"a": {"dtype": "F32", "shape": [2**62, 8], "data_offsets": [0, 8]}}, b"\0" * 8, "overflow"),
    ([1, 2], b"", "invalid type: sequence"),
    ({"a": "x"}, b"", "invalid type: string"),
    ({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "missing field `data_offsets`"),
])
def test_malformed_safetensors_are_refused(tmp_path, header, data, expected):
  """Negative and overlapping offsets used to import with exit 0, reading
  header bytes as weights."""
  path = _raw_safetensors(tmp_path / "bad.safetensors", header, data)
  with pytest.raises(CheckpointFormatError, match=r"not a valid safetensors file \(.*"
                                                  + re.escape(expected)):
    read_safetensors(path)


def test_malformed_checkpoint_folders_are_refused(saved, tmp_path):
  folder = saved["mixtral"][1]
  bad_config = _copy_without(folder, tmp_path / "config")
  (tmp_path / "config" / "config.json").write_text("[1, 2]")
  with pytest.raises(CheckpointFormatError, match="config.json holds a JSON list; expected an "
                                                  "object"):
    load_hf(bad_config)
  for name, weight_map, expected in [
      ("list", None, "holds a JSON list"),
      ("outside", {"x": "/etc/passwd"}, "names shard '/etc/passwd' outside the checkpoint"),
      ("parent", {"x": "../model.safetensors"}, "outside the checkpoint folder"),
      ("folder", {"x": "sub"}, "no such safetensors file")]:
    dst = tmp_path / name
    shutil.copytree(folder, dst)
    (dst / "sub").mkdir()
    index = [1, 2] if weight_map is None else {"weight_map": weight_map}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointFormatError, match=re.escape(expected)):
      load_hf(str(dst))


def test_fp8_tensors_round_trip(tmp_path):
  import ml_dtypes
  tensors = {"e4m3": np.array([0.5, -2, 448], ml_dtypes.float8_e4m3fn),
             "e5m2": np.array([1, -0.25], ml_dtypes.float8_e5m2)}
  write_safetensors(str(tmp_path / "f8.safetensors"), tensors)
  back = read_safetensors(str(tmp_path / "f8.safetensors"))
  for name, value in tensors.items():
    assert back[name].dtype == value.dtype
    np.testing.assert_array_equal(np.asarray(back[name]), value)
