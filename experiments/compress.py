"""Makes a trained MoE smaller: expert pruning, expert merging, int8 / int4
experts; prints (and writes) size and eval loss before and after each step.

  python experiments/compress.py --src=/tmp/moejax_lm_tiny --out=/tmp/lm_pruned \
      --prune_to=6 [--merge_to=4] [--quantize=int4 --group_size=32]

--src is a training workdir, a moejax model folder or a HuggingFace folder.
The steps run in the order prune -> merge -> quantize, each on the previous
one's result (moejax/compress):

  prune     per MoE layer, keep the --prune_to experts with the highest
            --statistic over the calibration batches; --renormalize makes each
            token's kept top-k weights sum to one
  merge     per MoE layer, cluster the experts by router-logit similarity on
            the calibration batches into --merge_to groups and average each
            group's weights by calibration frequency
  quantize  expert weights to int8 / int4 (qwix), per output channel or per
            --group_size rows of the contraction axis

--study_dir=D compresses --src every way of moejax/compress/pipeline.py's
STUDY instead and writes D/table.md, rows.json and loss_vs_bytes.png.

Calibration batches come from --data's train split, eval batches from its
eval split. --out (a moejax model folder; generate.py and the other
binaries load it) appears only once fully written; --hf_out also exports it
to a HuggingFace folder (float experts only). Exit codes: 0 done; 1 the
model or data cannot be used; 2 bad flags. Errors are one line.
"""

from __future__ import annotations

import json
import os

from absl import flags

from moejax.cli import data_config_or_exit, fail, run, write_rows

_SRC = flags.DEFINE_string("src", None, "Training workdir, moejax model folder or HF folder.")
_OUT = flags.DEFINE_string("out", None, "Model folder to write (must not exist); omit to only "
                           "measure.")
_HF_OUT = flags.DEFINE_string("hf_out", None, "Also export the result as a HuggingFace folder "
                              "(must not exist; float experts only).")
_PRUNE_TO = flags.DEFINE_integer("prune_to", None, "Experts per MoE layer after pruning.",
                                 lower_bound=1)
_STATISTIC = flags.DEFINE_enum("statistic", "frequency", ["frequency", "router_weight"],
                               "What pruning ranks experts by, summed over calibration data: "
                               "assignments, or the gate weight they carried.")
_RENORMALIZE = flags.DEFINE_bool("renormalize", False, "After pruning or merging, renormalise "
                                 "each token's top-k weights to sum to one.")
_MERGE_TO = flags.DEFINE_integer("merge_to", None, "Experts per MoE layer after merging.",
                                 lower_bound=1)
_QUANTIZE = flags.DEFINE_enum("quantize", None, ["int8", "int4"], "Weight-only quantization of "
                              "the expert weights.")
_GROUP_SIZE = flags.DEFINE_integer(
    "group_size", 0, "Rows of the contraction axis per quantization scale; 0 = one scale per "
    "output channel (--study_dir: the int4 row's group, 0 = 32).", lower_bound=0)
_DATA = flags.DEFINE_string("data", "stdlib_bytes", "Dataset (data.name) for calibration "
                            "(train split) and evaluation (eval split).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "data.data_dir.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 128, "(lm) tokens per example.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Examples per batch.", lower_bound=1)
_CALIBRATION_BATCHES = flags.DEFINE_integer("calibration_batches", 8, "Calibration batches.",
                                            lower_bound=1)
_EVAL_BATCHES = flags.DEFINE_integer("eval_batches", 32, "Evaluation batches (0 = the whole "
                                     "eval split).", lower_bound=0)
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write the rows as JSON here.")
_STUDY_DIR = flags.DEFINE_string(
    "study_dir", None, "Instead of one pipeline: compress --src every way of moejax/compress/"
    "pipeline.py's STUDY (pruning and merging to 75/50/25% of the experts, int8, int4, a "
    "combination) and write table.md, rows.json and loss_vs_bytes.png here (must not exist).")


def _study(config, variables, calibration, eval_batches) -> None:
  from moejax.compress.pipeline import plot_study, run_study
  from moejax.convert.safetensors_io import staged_dir
  rows = run_study(config, variables, calibration, eval_batches,
                   int4_group=_GROUP_SIZE.value or 32)
  table = _table([dict(r, step=r["method"]) for r in rows], "method")
  with staged_dir(_STUDY_DIR.value) as staging:  # appears only once complete
    with open(os.path.join(staging, "table.md"), "w") as f:
      f.write(table + "\n")
    with open(os.path.join(staging, "rows.json"), "w") as f:
      json.dump(rows, f, indent=1)
    plot_study(rows, os.path.join(staging, "loss_vs_bytes.png"))
  print(table)
  print(f"wrote {_STUDY_DIR.value}")


def _row(r) -> str:
  return (f"| {r['step']} | {r['experts']} | {r['total_params'] / 1e6:.3f}M | "
          f"{r['active_params'] / 1e6:.3f}M | {r['weight_bytes'] / 2**20:.2f} | "
          f"{r['eval_loss']:.4f} | {r['eval_accuracy']:.4f} |")


def _table(rows, first: str = "step") -> str:
  lines = [f"| {first} | experts | params | active params | weight MB | eval loss | eval acc. |",
           "|---|---|---|---|---|---|---|"]
  return "\n".join(lines + [_row(r) for r in rows])


def main(argv):
  if len(argv) > 1:
    fail(2, f"unexpected arguments {argv[1:]}")
  if not _SRC.value:
    fail(2, "--src is required")
  if not (_PRUNE_TO.value or _MERGE_TO.value or _QUANTIZE.value or _STUDY_DIR.value):
    fail(2, "nothing to do: give --prune_to, --merge_to and / or --quantize, or --study_dir")
  for flag, path in (("out", _OUT.value), ("hf_out", _HF_OUT.value),
                     ("study_dir", _STUDY_DIR.value)):
    if path and os.path.exists(path):
      fail(2, f"--{flag}={path} exists; choose a new folder")
  from moejax.compress.measure import evaluate, size_row
  from moejax.compress.pipeline import compress_model
  from moejax.train.sources import load_any
  from moejax.data.pipeline import make_datasets

  data_config = data_config_or_exit(name=_DATA.value, data_dir=_DATA_DIR.value,
                                    seq_len=_SEQ_LEN.value, batch_size=_BATCH_SIZE.value,
                                    eval_batches=_EVAL_BATCHES.value)
  try:
    config, variables, hf = load_any(_SRC.value)
    num_experts = config.moe.router.num_experts if config.moe else 0
    for flag, target in (("prune_to", _PRUNE_TO.value), ("merge_to", _MERGE_TO.value)):
      if target is not None and target > num_experts:
        fail(2, f"--{flag}={target} is invalid: the model has {num_experts} experts per MoE "
                "layer")
    if _PRUNE_TO.value and _MERGE_TO.value and _MERGE_TO.value > _PRUNE_TO.value:
      fail(2, f"--merge_to={_MERGE_TO.value} is invalid: more than --prune_to="
              f"{_PRUNE_TO.value}")
    datasets = make_datasets(data_config, config)
    train = datasets.make_train_iterator()
    calibration = [next(train)["inputs"] for _ in range(_CALIBRATION_BATCHES.value)]
    eval_batches = datasets.eval_batches()
    print(f"{_SRC.value}: {len(config.moe_layers)} MoE layers x {num_experts} experts; "
          f"{len(calibration)} calibration and {len(eval_batches)} eval batches of "
          f"{_DATA.value}", flush=True)

    if _STUDY_DIR.value:
      _study(config, variables, calibration, eval_batches)
      return
    rows = []

    def measure(step, config, variables):
      rows.append({"step": step, **size_row(config, variables),
                   **evaluate(config, variables, eval_batches)})
      print(f"  {step}: eval loss {rows[-1]['eval_loss']:.4f}", flush=True)

    measure("original", config, variables)
    config, variables = compress_model(
        config, variables, calibration, prune_to=_PRUNE_TO.value, merge_to=_MERGE_TO.value,
        quantize=_QUANTIZE.value, group=_GROUP_SIZE.value, statistic=_STATISTIC.value,
        renormalize=_RENORMALIZE.value, on_step=measure)
    print(_table(rows))
    if _HF_OUT.value:
      from moejax.convert.hf_export import save_hf
      model_type = (hf or {}).get("model_type")
      if not model_type:
        fail(2, "--hf_out needs a model imported from HuggingFace (its family to write)")
      save_hf(_HF_OUT.value, config, variables, model_type, base=hf)
      print(f"exported as {model_type} -> {_HF_OUT.value}")
    if _OUT.value:
      from moejax.convert.model_dir import save_model_dir
      save_model_dir(_OUT.value, config, variables, hf)
      print(f"wrote {_OUT.value}")
  except (ValueError, FileNotFoundError, FileExistsError) as err:
    fail(1, str(err).splitlines()[0])
  write_rows(_JSON_OUT.value, rows)


if __name__ == "__main__":
  run(main)
