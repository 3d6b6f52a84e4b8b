"""Runs a trained MoE with other inference routings (all experts, top-k,
probability thresholds) and prints eval loss against active parameters.

  python experiments/inference_routing.py --src=/tmp/moejax_ds_moe \
      --top_k=1,2,4 --thresholds=0.5,0.8

--src is a training workdir, a moejax model folder or a HuggingFace folder
with a token-choice router ('top_k' or 'threshold'). Rows (moejax/compress/
inference_routing.py): 'dense' (every expert; not for models with null
experts), top-k for each --top_k, XMoE threshold routing for each
--thresholds. Made for DS-MoE models (router.dense_training), which train
with every expert and run sparse, but any token-choice model can be swept.
Eval batches come from --data's eval split. Exit codes: 0 done; 1 the model
or data cannot be used; 2 bad flags. Errors are one line.
"""

from __future__ import annotations

from absl import flags

from moejax.cli import data_config_or_exit, fail, run, write_rows

_SRC = flags.DEFINE_string("src", None, "Training workdir, moejax model folder or HF folder.")
_TOP_K = flags.DEFINE_list("top_k", ["1", "2"], "Experts per token for the top-k rows.")
_THRESHOLDS = flags.DEFINE_list("thresholds", [], "Cumulative-probability thresholds for the "
                                "threshold rows (each in (0, 1]).")
_DATA = flags.DEFINE_string("data", "stdlib_bytes", "Dataset (data.name); its eval split.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "data.data_dir.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 128, "(lm) tokens per example.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Examples per batch.", lower_bound=1)
_EVAL_BATCHES = flags.DEFINE_integer("eval_batches", 32, "Evaluation batches (0 = the whole "
                                     "eval split).", lower_bound=0)
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write the rows as JSON here.")


def _numbers(flag: str, values, kind):
  try:
    return [kind(v) for v in values]
  except ValueError:
    fail(2, f"--{flag}={','.join(values)} is invalid: want a comma-separated list of "
            f"{kind.__name__}s")


def table(rows) -> str:
  lines = ["| routing | experts / token | active params | active share | eval loss | eval acc. |",
           "|---|---|---|---|---|---|"]
  return "\n".join(lines + [
      f"| {r['routing']} | {r['experts_per_token']:.2f} | {r['active_params'] / 1e6:.3f}M | "
      f"{r['active_fraction']:.1%} | {r['eval_loss']:.4f} | {r['eval_accuracy']:.4f} |"
      for r in rows])


def main(argv):
  if len(argv) > 1:
    fail(2, f"unexpected arguments {argv[1:]}")
  if not _SRC.value:
    fail(2, "--src is required")
  top_ks = _numbers("top_k", _TOP_K.value, int)
  thresholds = _numbers("thresholds", _THRESHOLDS.value, float)
  from moejax.compress.inference_routing import routing_variants, sweep
  from moejax.train.sources import load_any
  from moejax.data.pipeline import make_datasets

  data_config = data_config_or_exit(name=_DATA.value, data_dir=_DATA_DIR.value,
                                    seq_len=_SEQ_LEN.value, batch_size=_BATCH_SIZE.value,
                                    eval_batches=_EVAL_BATCHES.value)
  try:
    config, variables, _ = load_any(_SRC.value)
    variants = routing_variants(config, top_ks, thresholds)
    batches = make_datasets(data_config, config).eval_batches()
    print(f"{_SRC.value}: {len(config.moe_layers)} MoE layers x "
          f"{config.moe.router.num_experts} experts (trained "
          f"{'densely' if config.moe.router.dense_training else 'sparsely'}); "
          f"{len(batches)} eval batches of {_DATA.value}", flush=True)
    rows = sweep(variants, variables, batches)
  except (ValueError, FileNotFoundError) as err:
    fail(1, str(err).splitlines()[0])
  print(table(rows))
  write_rows(_JSON_OUT.value, rows)


if __name__ == "__main__":
  run(main)
