"""Converts models between HuggingFace checkpoints and moejax, and upcycles
dense models into MoE models.

  # HF folder (config.json + safetensors) -> moejax model folder
  python experiments/convert.py --mode=import --src=hf/Mixtral-tiny --out=/tmp/mixtral
  # moejax model folder or training workdir -> HF folder (transformers loads it)
  python experiments/convert.py --mode=export --src=/tmp/mixtral --out=/tmp/mixtral_hf \
      [--model_type=mixtral] [--layout=per_expert|fused] [--dtype=bfloat16]
  # dense LM (HF Llama/Qwen2/..., moejax folder or workdir) -> MoE model folder
  python experiments/convert.py --mode=upcycle --src=/tmp/dense_workdir --out=/tmp/moe \
      --num_experts=8 --top_k=2 [--granularity=2 --noise_std=0.01]
  # ... or a mixture of LoRA experts over the one dense FFN (MoLoRA)
  python experiments/convert.py --mode=upcycle --src=/tmp/dense_workdir --out=/tmp/molora \
      --num_experts=8 --top_k=2 --lora_rank=8 --lora_shared_base

The source's tokenizer (tokenizer.json, tokenizer_config.json, ...) is copied along.
Supported HF families: mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v2, deepseek_v3, phimoe,
granitemoe, ernie4_5_moe, gpt_oss, dbrx and the dense llama, mistral, qwen2, qwen3. Only
safetensors are read (pickle `.bin` checkpoints are refused). --out must not exist; it appears
only once fully written.
Exit codes: 0 done; 1 the model cannot be converted; 2 bad flags. Errors are one line.
"""

from __future__ import annotations


from absl import flags

from moejax.cli import fail, run

MODES = ("import", "export", "upcycle")
_MODE = flags.DEFINE_enum("mode", None, MODES, "import: HF -> moejax folder; export: moejax "
                          "-> HF folder; upcycle: dense -> MoE moejax folder.")
_SRC = flags.DEFINE_string("src", None, "A HuggingFace folder, a moejax model folder or a "
                           "training workdir.")
_OUT = flags.DEFINE_string("out", None, "Output folder (must not exist).")
_MODEL_TYPE = flags.DEFINE_string("model_type", None, "(export) HF family to write; default: "
                                  "the family the model was imported from.")
_LAYOUT = flags.DEFINE_enum("layout", "per_expert", ("per_expert", "fused"), "(export) expert "
                            "tensors one per expert, or fused gate_up_proj / down_proj.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ("float32", "bfloat16", "float16"),
                           "(export) dtype of the written tensors.")
_MAX_SHARD_MB = flags.DEFINE_integer("max_shard_mb", 5000, "(export) shard size; bigger "
                                     "checkpoints get an index json.")
_NUM_EXPERTS = flags.DEFINE_integer("num_experts", 8, "(upcycle) routed experts.")
_TOP_K = flags.DEFINE_integer("top_k", 2, "(upcycle) experts per token.")
_GRANULARITY = flags.DEFINE_integer("granularity", 1, "(upcycle) split the dense FFN into this "
                                    "many slices; expert d_ff = dense d_ff / granularity.")
_NOISE_STD = flags.DEFINE_float("noise_std", 0.0, "(upcycle) relative Gaussian noise added to "
                                "each expert copy.")
_ROUTER_STD = flags.DEFINE_float("router_init_std", 0.02, "(upcycle) std of the new router.")
_MOE_EVERY = flags.DEFINE_integer("moe_every", 1, "(upcycle) every n-th block becomes MoE.")
_LORA_RANK = flags.DEFINE_integer("lora_rank", 0, "(upcycle) LoRA adapters of this rank on "
                                  "every expert (model.moe.lora_rank); 0 = none.")
_LORA_SHARED = flags.DEFINE_bool("lora_shared_base", False, "(upcycle) the experts share one "
                                 "copy of the dense FFN and differ by their adapters only "
                                 "(MoLoRA; needs --lora_rank).")
_SEED = flags.DEFINE_integer("seed", 0, "(upcycle) seed of the router and the noise.")



def _count(variables) -> int:
  import jax
  return sum(x.size for x in jax.tree.leaves(variables.get("params", {})))


def main(argv):
  if len(argv) > 1:
    fail(2, f"unexpected arguments {argv[1:]}")
  for flag, value in (("mode", _MODE.value), ("src", _SRC.value), ("out", _OUT.value)):
    if not value:
      fail(2, f"--{flag} is required")
  import os
  if os.path.exists(_OUT.value):
    fail(2, f"--out={_OUT.value} exists; choose a new folder")
  import numpy as np
  import ml_dtypes
  import jax
  from moejax.config import MoEConfig, RouterConfig
  from moejax.convert.hf_export import save_hf
  from moejax.convert.model_dir import save_model_dir
  from moejax.train.sources import load_any, tokenizer_folder
  from moejax.data.tokenizer import tokenizer_for_model
  from moejax.convert.upcycle import upcycle
  try:
    config, variables, hf = load_any(_SRC.value)
    # The source's tokenizer files travel with the model; read them first so a
    # broken one stops the conversion before anything is written.
    tokenizer_from = tokenizer_folder(_SRC.value)
    tokenizer = tokenizer_for_model(tokenizer_from, config.lm.vocab_size)
    with_tokenizer = "" if tokenizer is None else f" + tokenizer ({tokenizer.vocab_size} tokens)"
    if _MODE.value == "import":
      save_model_dir(_OUT.value, config, variables, hf, tokenizer_from=tokenizer_from)
      print(f"imported {hf.get('model_type') if hf else 'moejax'} model: {config.num_layers} "
            f"blocks ({len(config.moe_layers)} MoE), {_count(variables):,} parameters"
            f"{with_tokenizer} -> {_OUT.value}")
    elif _MODE.value == "export":
      model_type = _MODEL_TYPE.value or (hf or {}).get("model_type")
      if not model_type:
        fail(2, "--model_type is required (the source was not imported from HF)")
      dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16,
               "float16": np.float16}[_DTYPE.value]
      save_hf(_OUT.value, config, variables, model_type, base=hf, layout=_LAYOUT.value,
              dtype=dtype, max_shard_bytes=_MAX_SHARD_MB.value * 2**20,
              tokenizer_from=tokenizer_from)
      print(f"exported as {model_type} ({_LAYOUT.value}, {_DTYPE.value}){with_tokenizer} -> "
            f"{_OUT.value}")
    else:
      d_ff = config.dense_d_ff // max(_GRANULARITY.value, 1)
      moe = MoEConfig(router=RouterConfig(num_experts=_NUM_EXPERTS.value, top_k=_TOP_K.value,
                                          normalize_top_k=True),
                      d_model=config.d_model, d_ff=max(d_ff, 1), activation=config.activation,
                      dispatch="dropless", lora_rank=_LORA_RANK.value,
                      lora_shared_base=_LORA_SHARED.value)
      config, variables = upcycle(config, variables, moe, rng=jax.random.PRNGKey(_SEED.value),
                                  moe_every=_MOE_EVERY.value, granularity=_GRANULARITY.value,
                                  noise_std=_NOISE_STD.value,
                                  router_init_std=_ROUTER_STD.value)
      save_model_dir(_OUT.value, config, variables, tokenizer_from=tokenizer_from)
      adapters = f", LoRA rank {moe.lora_rank}" if moe.lora_rank else ""
      if moe.lora_shared_base:
        adapters += " over one shared FFN"
      print(f"upcycled: {len(config.moe_layers)} MoE blocks x {_NUM_EXPERTS.value} experts "
            f"(d_ff {moe.d_ff}, top-{_TOP_K.value}{adapters}), {_count(variables):,} parameters"
            f"{with_tokenizer} -> {_OUT.value}")
  except (ValueError, FileNotFoundError, FileExistsError) as err:
    fail(1, str(err).splitlines()[0])


if __name__ == "__main__":
  run(main)
