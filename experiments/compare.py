"""Trains several configs one after another and tabulates them: by default the
tiny MoE LM against its dense baseline with equal active parameters.

  python experiments/compare.py --workdir=/tmp/compare \
      [--configs=configs/lm_tiny.py,configs/lm_tiny_dense.py] [--set=train.num_steps=300]

Each config trains in <workdir>/<config name> (resuming if it is there), then
<workdir>/results.md and results.json hold: params (total / active per token),
final train loss, eval loss, tokens or examples per second, expert balance and
drop fraction (MoE only).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

from absl import flags

from moejax.cli import run

_CONFIGS = flags.DEFINE_list("configs", ["configs/lm_tiny.py", "configs/lm_tiny_dense.py"],
                             "Config files to train and compare.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory of the runs' workdirs.")
_SET = flags.DEFINE_multi_string("set", [], "field=value override applied to every config, "
                                 "e.g. --set=train.num_steps=300 (repeatable).")


def load_config(path: str):
  """get_config() of a config file; a missing or broken file is one line."""
  if not os.path.exists(path):
    sys.exit(f"error: --configs: {path} does not exist")
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def apply_override(config, assignment: str) -> None:
  """'a.b.c=value' -> config.a.b.c = value, parsed like the value's type."""
  key, sep, text = assignment.partition("=")
  if not sep:
    sys.exit(f"error: --set={assignment!r} is invalid: expected field=value")
  *path, leaf = key.split(".")
  node = config
  try:
    for part in path:
      node = node[part]
    current = node[leaf]
  except KeyError:
    sys.exit(f"error: --set={assignment!r} is invalid: unknown config field {key!r}")
  try:
    if text == "None":
      value = None
    elif isinstance(current, bool):
      value = {"true": True, "false": False}[text.lower()]
    elif current is None:  # unset optional field: a JSON number, else a string
      try:
        value = json.loads(text)
      except json.JSONDecodeError:
        value = text
    else:
      value = type(current)(text)
    node[leaf] = value
  except (KeyError, ValueError, TypeError) as err:
    sys.exit(f"error: --set={assignment!r} is invalid: {err}")


def active_params(exp, params) -> int:
  """Parameters a token uses: everything minus the experts it does not visit."""
  import jax
  total = sum(x.size for x in jax.tree.leaves(params))
  if not exp.model.moe_layers:
    return total
  r = exp.model.moe.router
  per_token = 1 if r.name in ("expert_choice", "soft_moe") else r.top_k
  expert_leaves = [x for path, x in jax.tree_util.tree_leaves_with_path(params)
                   if "experts" in jax.tree_util.keystr(path)]
  expert_total = sum(x.size for x in expert_leaves)
  return total - expert_total + expert_total * per_token // r.num_experts


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if not _WORKDIR.value:
    sys.exit("error: --workdir is required")
  import jax
  import numpy as np
  from moejax.data import DataError
  from moejax.train import (CheckpointError, TrainingError, experiment_from_config,
                            train_and_evaluate)
  from moejax.train.writers import read_metrics
  from moejax.train.report import print_summary

  rows = []
  for path in _CONFIGS.value:
    config = load_config(path)
    for assignment in _SET.value:
      apply_override(config, assignment)
    name = os.path.basename(path)[:-3]
    try:
      exp = experiment_from_config(config)
    except ValueError as err:
      sys.exit(f"error: {path}: config.{err}")
    workdir = os.path.join(_WORKDIR.value, name)
    print(f"\n=== {name} ({path}) -> {workdir}", flush=True)
    try:
      summary = train_and_evaluate(exp, workdir)
    except (DataError, CheckpointError, TrainingError) as err:
      sys.exit(f"error: {name}: {err}")
    print_summary(summary, workdir)
    from moejax.models import build_model
    shapes = jax.eval_shape(build_model(exp.model).init, jax.random.key(0),
                            np.zeros((1, exp.data.seq_len), np.int32) if exp.model.kind == "lm"
                            else np.zeros((1, exp.model.image_size, exp.model.image_size,
                                           exp.model.num_channels), np.float32))["params"]
    last = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
            if r["split"] == "train"][-1]
    rows.append({
        "config": name, "params": int(sum(x.size for x in jax.tree.leaves(shapes))),
        "active_params": int(active_params(exp, shapes)), "steps": summary.step,
        "train_loss": summary.train_loss, "eval_loss": summary.eval["loss"],
        "eval_accuracy": summary.eval["accuracy"], "baseline_loss": summary.baseline_loss,
        f"{summary.item_name}_per_second": summary.items_per_second,
        "balance": float(np.mean(last["balance"])) if "balance" in last else None,
        "fraction_dropped": float(np.mean(last["fraction_dropped"]))
        if "fraction_dropped" in last else None})

  rate_key = [k for k in rows[0] if k.endswith("_per_second")][0]
  lines = ["| config | params | active params | steps | train loss | eval loss | eval acc. | "
           f"{rate_key.replace('_', ' ')} | balance | dropped |", "|---" * 10 + "|"]
  for r in rows:
    moe = (f"{r['balance']:.2f} | {r['fraction_dropped']:.1%}" if r["balance"] is not None
           else "– | –")
    lines.append(f"| {r['config']} | {r['params'] / 1e6:.2f}M | {r['active_params'] / 1e6:.2f}M | "
                 f"{r['steps']} | {r['train_loss']:.4f} | {r['eval_loss']:.4f} | "
                 f"{r['eval_accuracy']:.2%} | {r.get(rate_key, float('nan')) / 1e3:.1f}k | {moe} |")
  table = "\n".join(lines)
  print("\n" + table)
  with open(os.path.join(_WORKDIR.value, "results.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(_WORKDIR.value, "results.json"), "w") as f:
    json.dump(rows, f, indent=2)
  print(f"\nwrote {_WORKDIR.value}/results.md and results.json")


if __name__ == "__main__":
  run(main)
