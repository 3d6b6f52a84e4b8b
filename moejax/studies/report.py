"""A study's results as files: results.md (rows, tuning sweeps, one paired
verdict line per claim), results.json, results.png, and scales.md, the
claims at both scales side by side with their trend."""

from __future__ import annotations

import json
import os
from typing import Dict, Optional

from moejax.studies.stats import edge_extension, trend

_SHORT = {"train.learning_rate": "lr", "train.load_balance_weight": "balance weight"}


def paired_text(p: Dict) -> str:
  """'Δ -0.0112 [-0.0527, +0.0303] (n 3, t -1.2)': the paired difference
  better - worse with its 95% interval."""
  if p["low"] is None:
    return f"Δ {p['delta']:+.4f} (n {p['n']}: no interval)"
  return (f"Δ {p['delta']:+.4f} [{p['low']:+.4f}, {p['high']:+.4f}] (n {p['n']}, "
          f"t {p['t']:+.3g})")


def _tuned_text(summary: Dict) -> str:
  settings = summary.get("settings") or {}
  return ", ".join(f"{_SHORT.get(k, k)} {v:g}" for k, v in settings.items()) or "–"


def markdown(results: Dict) -> str:
  """The rows (mean ± std over seeds, tuned values), the sweeps, and one
  claim -> measured -> paired difference -> verdict line each."""
  n = results["seeds"]
  # FFN experts per token (last train step, mean over layers and seeds): only
  # when some row recorded it
  per_token = any("experts_per_token" in s for s in results["rows"].values())
  tuned = (f"each row tuned ({', '.join(results['tuned'])})" if results.get("tuned")
           else "untuned: every row at the base config's learning rate and balance weight")
  lines = [f"{results['description']}; {n} seed(s), scale {results.get('scale', 'base')}, "
           f"{tuned}. "
           "Rows: mean ± std over seeds. Claims: the paired difference better − worse over "
           "seeds (same initialisation and data order) with its 95% Student-t interval; "
           "*holds* when the interval lies below 0, *does not hold* when above.", "",
           "| row | params | active | steps | tuned | eval loss | train loss | balance | "
           "dropped |" + (" experts/token |" if per_token else ""),
           "|---" * (10 if per_token else 9) + "|"]
  fmt = lambda s, key, f: f"{s[key]['mean']:{f}} ± {s[key]['std']:{f}}" if key in s else "–"
  for row, s in results["rows"].items():
    lines.append(f"| {row} | {s['params'] / 1e6:.2f}M | {s['active_params'] / 1e6:.2f}M | "
                 f"{s['steps']} | {_tuned_text(s)} | {fmt(s, 'eval_loss', '.4f')} | "
                 f"{fmt(s, 'train_loss', '.4f')} | {fmt(s, 'balance', '.2f')} | "
                 f"{fmt(s, 'fraction_dropped', '.1%')} |"
                 + (f" {fmt(s, 'experts_per_token', '.2f')} |" if per_token else ""))
  sweeps = [(row, key, sweep) for row, s in results["rows"].items()
            for key, sweep in (s.get("sweeps") or {}).items()]
  if sweeps:
    inherited = any(s.get("tuned_at") == "base" for s in results["rows"].values())
    lines += ["", ("Tuning, done at the base scale and reused here " if inherited else "Tuning ")
              + f"(seed 0, trained on the first "
              f"{100 - results.get('tune_holdout_percent', 10)}% of the train split, held-out loss on "
              "the rest):", "", "| row | swept | candidates: held-out loss | chosen |",
              "|---" * 4 + "|"]
    for row, key, sweep in sweeps:
      cells = ", ".join(f"{c:g}: " + ("diverged" if loss is None else f"{loss:.4f}")
                        for c, loss in zip(sweep["candidates"], sweep["held_out_loss"]))
      edge = edge_extension(key, sweep["candidates"], sweep["chosen"]) is not None
      lines.append(f"| {row} | {_SHORT.get(key, key)} | {cells} | {sweep['chosen']:g}"
                   + (" (at the sweep's edge)" if edge else "") + " |")
  lines.append("")
  for c in results["claims"]:
    lines.append(f"- **Claim**: {c['text']}. **Measured** ({c['metric']}): {c['better']} "
                 f"{c['better_mean']:.4f} ± {c['better_std']:.4f} vs {c['worse']} "
                 f"{c['worse_mean']:.4f} ± {c['worse_std']:.4f}; paired "
                 f"{paired_text(c['paired'])}. **Verdict: {c['verdict']}**.")
  curves = {r: s["loss_curve"] for r, s in results["rows"].items() if "loss_curve" in s}
  if curves:
    names = list(curves)
    lines += ["", f"Train loss (mean over seeds) by step: {', '.join(names)}.", "",
              "| step | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for i, step in enumerate(curves[names[0]]["steps"]):
      lines.append(f"| {step} | " + " | ".join(f"{curves[n]['mean'][i]:.4f}" for n in names)
                   + " |")
  return "\n".join(lines)


def write_results(results: Dict, workdir: str) -> None:
  """results.json, results.md and results.png in workdir."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(markdown(results) + "\n")
  _plot(results, os.path.join(workdir, "results.png"))


def _plot(results: Dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = list(results["rows"])
  means = [results["rows"][r]["eval_loss"]["mean"] for r in rows]
  stds = [results["rows"][r]["eval_loss"]["std"] for r in rows]
  curves = {r: results["rows"][r]["balance_curve"] for r in rows
            if "balance_curve" in results["rows"][r]}
  width = 1.6 * len(rows) + 2
  fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(width + (5 if curves else 0), 3.5),
                           squeeze=False)
  ax = axes[0, 0]
  ax.bar(rows, means, yerr=stds, capsize=4, color="tab:blue")
  ax.set_ylim(min(means) - 3 * max(max(stds), 1e-3), max(means) + 3 * max(max(stds), 1e-3))
  ax.set_ylabel(f"eval loss (mean ± std, {results['seeds']} seeds)")
  ax.set_title(results["study"])
  if curves:
    ax = axes[0, 1]
    for row, curve in curves.items():
      ax.plot(curve["steps"], curve["mean"], label=row)
    ax.set_xlabel("step")
    ax.set_ylabel("max / mean expert load (1 = balanced)")
    ax.set_title("load balance during training, mean over seeds")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _load(path: str) -> Optional[Dict]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def scales_markdown(base: Dict, large: Dict) -> str:
  """Each claim at both scales: paired Δ with its interval, the verdicts, and
  whether the gap shrank, grew or flipped at the larger scale."""
  lines = [f"{base['study']}: each claim at the base scale ({base['seeds']} seeds) and at the "
           f"large scale ({large['seeds']} seeds; {', '.join(large['overrides'])}). Δ = better − "
           "worse, paired over seeds, 95% interval.", "",
           "| claim | base: Δ | base verdict | large: Δ | large verdict | gap at large scale |",
           "|---" * 6 + "|"]
  large_claims = {(c["better"], c["worse"], c["metric"]): c for c in large["claims"]}
  for c in base["claims"]:
    other = large_claims.get((c["better"], c["worse"], c["metric"]))
    if other is None:
      continue
    lines.append(f"| {c['better']} < {c['worse']} ({c['metric']}) | {paired_text(c['paired'])} "
                 f"| {c['verdict']} | {paired_text(other['paired'])} | {other['verdict']} | "
                 f"{trend(c['paired']['delta'], other['paired']['delta'])} |")
  return "\n".join(lines)


def write_scales(workdir: str) -> Optional[str]:
  """scales.md in workdir when both scales have results; returns its text."""
  base = _load(os.path.join(workdir, "results.json"))
  large = _load(os.path.join(workdir, "large", "results.json"))
  if base is None or large is None or "paired" not in (base["claims"] or [{}])[0]:
    return None
  text = scales_markdown(base, large)
  with open(os.path.join(workdir, "scales.md"), "w") as f:
    f.write(text + "\n")
  return text


def summary_markdown(results_dir: str) -> str:
  """One table over every study under results_dir (<study>/results.json and
  <study>/large/results.json): a row per claim, with its paired Δ, interval,
  n and verdict at each scale, the tuning, and the trend between scales."""
  lines = ["| study | claim (better < worse) | tuned | base: paired Δ [95% interval] (n, t) | "
           "verdict | large (4× compute): paired Δ | verdict | gap |", "|---" * 8 + "|"]
  for name in sorted(os.listdir(results_dir)):
    base = _load(os.path.join(results_dir, name, "results.json"))
    if base is None or not base.get("claims") or "paired" not in base["claims"][0]:
      continue
    large = _load(os.path.join(results_dir, name, "large", "results.json"))
    large_claims = {(c["better"], c["worse"], c["metric"]): c
                    for c in (large or {}).get("claims", [])}
    tuned = ", ".join(base.get("tuned") or []) or "no"
    for c in base["claims"]:
      metric = "" if c["metric"] == "eval_loss" else f" ({c['metric']})"
      row = (f"| `{name}` | {c['better']} < {c['worse']}{metric} | {tuned} | "
             f"{paired_text(c['paired'])} | **{c['verdict']}** |")
      other = large_claims.get((c["better"], c["worse"], c["metric"]))
      if other:
        row += (f" {paired_text(other['paired'])} | **{other['verdict']}** "
                f"| {trend(c['paired']['delta'], other['paired']['delta'])} |")
      else:
        row += " not run | | |"
      lines.append(row)
  return "\n".join(lines)
