"""Train several experiments and tabulate them (compare.py, router_zoo.py and
the router notebook share this).

A *run* is (name, ConfigDict). Each trains in <workdir>/<name> (resuming when
it is there); the row records parameters (total and active per token), final
train and eval loss, throughput, expert balance and drop fraction.
"""

from __future__ import annotations

import importlib.util
import ast
import json
import os
from typing import Dict, List

import jax
import numpy as np

from moejax.models import abstract_variables
from moejax.models.params import active_params
from moejax.train.config import experiment_from_config
from moejax.train.loop import train_and_evaluate
from moejax.train.report import print_summary
from moejax.train.writers import read_metrics

# Routers whose choice for a token depends on the other tokens of the batch
# (future positions included): in a causal LM their loss is not comparable.


def load_config_file(path: str):
  """get_config() of an ml_collections config file. Raises ValueError."""
  if not os.path.exists(path):
    raise ValueError(f"config file {path} does not exist")
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def apply_override(config, assignment: str) -> None:
  """'a.b.c=value' -> config.a.b.c = value, parsed as --config.a.b.c=value
  would be: like the current value's type, Python literals for tuples and
  unset optional fields, 'None' sets None. Raises ValueError naming the
  assignment."""
  key, sep, text = assignment.partition("=")
  if not sep:
    raise ValueError(f"--set={assignment!r} is invalid: expected field=value")
  *path, leaf = key.split(".")
  node = config
  try:
    for part in path:
      node = node[part]
    current = node[leaf]
  except KeyError:
    raise ValueError(f"--set={assignment!r} is invalid: unknown config field {key!r}") from None
  try:
    if text == "None":
      value = None
    elif isinstance(current, bool):
      value = {"true": True, "false": False}[text.lower()]
    elif current is None or isinstance(current, (tuple, list)):
      try:  # a Python literal: 3, 0.5, (3, 5), 'text'; anything else is a string
        value = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        value = text
    else:
      value = type(current)(text)
    node[leaf] = value
  except (KeyError, ValueError, TypeError) as err:
    raise ValueError(f"--set={assignment!r} is invalid: {err}") from None


def _param_shapes(exp):
  return abstract_variables(exp.model, exp.data.seq_len)["params"]


class RunStopped(RuntimeError):
  """A run stopped before its last step (SIGTERM, train.stop_at_step): it has
  no table row, and rerunning resumes it. The message is one line."""


def train_row(name: str, config, workdir: str, verbose: bool = True) -> Dict:
  """Trains one run in workdir and returns its table row; verbose prints
  progress and the end-of-run summary. Raises ValueError for a bad config,
  RunStopped for a run that stopped early and the trainer's errors for
  data/checkpoint/NaN."""
  exp = experiment_from_config(config)
  summary = train_and_evaluate(exp, workdir, log=print if verbose else (lambda line: None))
  if verbose:
    print_summary(summary, workdir)
  if summary.stopped is not None:   # an interrupted run's losses are not a result
    raise RunStopped(f"{name}: stopped at step {summary.step} of {exp.train.num_steps} "
                     f"({summary.stopped}); rerun the same command to resume {workdir}")
  shapes = _param_shapes(exp)
  train_rows = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
                if r["split"] == "train"]
  last = train_rows[-1]
  router = exp.model.moe.router.name if exp.model.moe_layers else None
  return {
      "config": name, "router": router,
      "causal": router is None or exp.model.moe.router.family.causal,
      "params": int(sum(x.size for x in jax.tree.leaves(shapes))),
      "active_params": int(active_params(exp.model, shapes)), "steps": summary.step,
      "seed": exp.seed, "train_loss": summary.train_loss,
      "eval_loss": summary.eval["loss"], "eval_accuracy": summary.eval["accuracy"],
      "baseline_loss": summary.baseline_loss, "item": summary.item_name,
      "items_per_second": summary.items_per_second,
      "balance": float(np.mean(last["balance"])) if "balance" in last else None,
      "fraction_dropped": (float(np.mean(last["fraction_dropped"]))
                           if "fraction_dropped" in last else None),
      # FFN experts a token ran through (mean over MoE layers): variable for
      # threshold, ReMoE and expert-threshold routing, and below top_k when
      # zero-computation experts take some choices
      "experts_per_token": (float(np.mean(last["experts_per_token"]))
                            if "experts_per_token" in last else None),
      # max/mean expert load (mean over MoE layers) at every logged step
      "balance_curve": [[r["step"], float(np.mean(r["balance"]))] for r in train_rows
                        if "balance" in r],
      "loss_curve": [[r["step"], float(r["loss"])] for r in train_rows],
      "workdir": workdir}


def markdown_table(rows: List[Dict]) -> str:
  rate = rows[0]["item"] if rows else "tokens"
  lines = ["| run | params | active params | steps | train loss | eval loss | eval acc. | "
           f"{rate}/s | balance | dropped |", "|---" * 10 + "|"]
  for r in rows:
    moe = (f"{r['balance']:.2f} | {r['fraction_dropped']:.1%}" if r["balance"] is not None
           else "– | –")
    mark = "" if r["causal"] else " †"
    lines.append(f"| {r['config']}{mark} | {r['params'] / 1e6:.2f}M | "
                 f"{r['active_params'] / 1e6:.2f}M | {r['steps']} | {r['train_loss']:.4f} | "
                 f"{r['eval_loss']:.4f} | {r['eval_accuracy']:.2%} | "
                 f"{r['items_per_second'] / 1e3:.1f}k | {moe} |")
  if any(not r["causal"] for r in rows):
    lines.append("")
    lines.append("† routing depends on other tokens of the batch, future ones included: "
                 "an LM's loss with it is not comparable to causal routers.")
  return "\n".join(lines)


def write_results(rows: List[Dict], out_dir: str) -> str:
  """results.md and results.json in out_dir; returns the Markdown table."""
  table = markdown_table(rows)
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(rows, f, indent=2)
  return table
