"""Runs a study of moejax/studies/catalogue.py: tuning, seeds, a paired
verdict per claim (experiments/study.py).

A study is a base config (a preset), rows (name -> overrides of the base)
and claims. Every row trains once per seed in <workdir>/<row>[/<tuned>]/
seed_<s>; rows of one seed share their initialisation seed and data order
(data.shuffle_seed is not a study variable), so a claim "`better` has a
lower `metric` than `worse`" is judged on the per-seed differences with a
95% Student-t interval (moejax/studies/stats.py).

Before its seeds, each row is tuned (Study.tune; study.py --tune): its peak
learning rate over {0.5x, 1x, 2x} its default, then, where Study.tune has
'balance' and the row trains with a load-balance loss, that loss's weight
over {1e-3, 1e-2}, each judged at seed 0 on a held-out slice of the *train*
split (the last tune_holdout percent, never trained on in the sweep, never
the eval split the claims are judged on). The chosen values train every seed.

A second scale (Study.large; study.py --scale=large) reruns the study with
4x the training steps (4x the compute, 4M bytes of text that never repeat) in
<workdir>/large, each row at the values tuned at the base scale (swept anew
only where the base scale has none); with both scales' results, <workdir>/scales.md tables each
claim's gap at both and says whether it shrank, grew or flipped.

A row may start from an earlier row's weights: in its overrides, `{row}`
stands for that row's workdir (same seed) and `{kind:row}` for a sparse
upcycle of it made as Study.upcycles[kind] says (moejax.convert.upcycle),
e.g. `train.init_from={upcycled:dense_pretrained}`. Such a row's model is
the source's (moejax.train.init_from) plus its own `model.*` overrides; it
trains (and is tuned) after its source. Only study_row.json files are
committed: where such a row has to train and its source's run has no
checkpoint (a fresh clone), the source trains again first, to the same row.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from moejax.studies.catalogue import STUDIES, Claim, Study
from moejax.studies.comparison import apply_override
from moejax.studies.jobs import (Job, estimated_seconds, finished_row, has_weights, run_jobs,
                                 shared_row)
from moejax.studies.shared_runs import SharedRuns
from moejax.studies.report import write_results, write_scales
from moejax.studies.stats import choose, edge_extension, mean_std, paired_difference


# What a tuning sweep varies: name -> (config field, candidates given the
# row's own value). The learning rate is scaled; the balance coefficient is
# swept only on rows that train with one (an MoE with a load-balance weight).
TUNABLE = {
    "lr": ("train.learning_rate", lambda value: [value * 0.5, value, value * 2.0]),
    "balance": ("train.load_balance_weight", lambda value: [1e-3, 1e-2]),
}
SCALES = ("base", "large")


def _field(config, key: str):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def _sweeps(config, tune: Sequence[str]) -> List[str]:
  """The sweeps of `tune` that apply to a row of this config."""
  moe_balanced = config.model.moe_every > 0 and config.train.load_balance_weight > 0
  return [name for name in tune if name != "balance" or moe_balanced]


def _setting_name(settings: Dict[str, float]) -> str:
  """'lr0.003_lb0.01': the folder of a row's runs at these tuned values."""
  short = {"train.learning_rate": "lr", "train.load_balance_weight": "lb"}
  return "_".join(f"{short[key]}{value:g}" for key, value in settings.items())


def _levels(study: Study) -> List[List[str]]:
  """The rows in the order their sources allow: a row trains after every row
  its overrides name ({row} / {kind:row})."""
  needs = {}
  for row, overrides in study.rows.items():
    needs[row] = {m.group(2) for a in overrides for m in _SOURCE.finditer(a)}
    unknown = needs[row] - set(study.rows)
    if unknown:
      raise ValueError(f"row {row!r} names {sorted(unknown)}, which are not rows of the study")
  done, levels = set(), []
  while len(done) < len(needs):
    level = [row for row in study.rows if row not in done and needs[row] <= done]
    if not level:
      raise ValueError(f"the rows {sorted(set(needs) - done)} name each other in a circle")
    levels.append(level)
    done |= set(level)
  return levels


def _selected_rows(study: Study, rows: Optional[Sequence[str]]) -> List[str]:
  """The rows to train (all when None), with every row they start from."""
  if not rows:
    return list(study.rows)
  unknown = [row for row in rows if row not in study.rows]
  if unknown:
    raise ValueError(f"--rows={','.join(rows)} is invalid: {unknown} are not rows of the study "
                     f"(its rows: {', '.join(study.rows)})")
  needed = {m.group(2) for row in rows for a in study.rows[row] for m in _SOURCE.finditer(a)}
  missing = sorted(needed - set(rows))
  if missing:
    raise ValueError(f"--rows={','.join(rows)} is invalid: its rows start from {missing}; "
                     "add them")
  return [row for row in study.rows if row in rows]


def study_workdir(workdir: str, scale: str) -> str:
  """Where a scale's runs and results live: workdir itself for 'base',
  workdir/large for 'large'."""
  return workdir if scale == "base" else os.path.join(workdir, scale)


class _Runner:
  """Runs (or, planning, only lists) a study's jobs: tuning sweeps on a
  held-out slice of the train split at seed 0, then every seed at the chosen
  values, level by level (rows that start from other rows come after them)."""

  def __init__(self, name: str, workdir: str, overrides: Sequence[str], tune: Sequence[str],
               workers: int, verbose: bool, planning: bool,
               inherited: Optional[Dict[str, Dict]] = None,
               rows: Optional[Sequence[str]] = None, extend_edges: int = 0,
               studies_root: Optional[str] = None):
    self.name, self.study, self.workdir = name, STUDIES[name], workdir
    if not isinstance(extend_edges, int) or extend_edges < 0:
      raise ValueError(f"--extend_edges={extend_edges!r} is invalid: use an integer >= 0")
    self.extend_edges = extend_edges
    self.rows = _selected_rows(self.study, rows)
    self.overrides, self.tune, self.workers = list(overrides), list(tune), workers
    self.verbose, self.planning = verbose, planning
    self.estimate = True   # planning: estimate the CPU time of the runs left
    # row -> {'settings', 'sweeps'} chosen at another scale: used, not swept again
    self.inherited = inherited or {}
    self.row_dir: Dict[str, str] = {}     # row -> folder of its seed_<s> runs
    self.plan: List[Tuple[str, int, int, float]] = []   # (phase, runs, to train, seconds)
    self.planned = set()                  # folders of the runs planned so far
    # Finished runs of the studies beside this one (at every scale: a large
    # run's config has the large overrides), reused by config. studies_root:
    # the folder of the studies' workdirs; workdir's parent by default.
    self.shared = SharedRuns(studies_root or os.path.dirname(os.path.abspath(workdir)))
    # Rows that later rows start from; their seed runs by folder; the upcycles
    # of them that later rows name: folder -> (source folder, seed, kind).
    self.source_rows = {m.group(2) for row in self.rows for a in self.study.rows[row]
                        for m in _SOURCE.finditer(a)}
    self.source_jobs: Dict[str, Job] = {}
    self.upcycles: Dict[str, Tuple[str, int, str]] = {}

  def jobs_rows(self, phase: str, jobs: Sequence[Job]) -> List[Optional[Dict]]:
    rows = [finished_row(job) or shared_row(self.study.base, job, self.shared, record=False)
            for job in jobs]
    todo = [job for job, row in zip(jobs, rows) if row is None]
    self.prepare_sources(todo)
    if not self.planning:
      return run_jobs(self.name, self.study.base, jobs, self.workers, self.verbose, self.shared)
    self.plan_jobs(phase, len(jobs), todo)
    return rows

  def plan_jobs(self, phase: str, runs: int, todo: Sequence[Job]) -> None:
    todo = [job for job in todo if job.out not in self.planned]
    self.planned.update(job.out for job in todo)
    seconds = (sum(estimated_seconds(self.study.base, job) for job in todo)
               if self.estimate else 0.0)
    self.plan.append((phase, runs, len(todo), seconds))

  def prepare_sources(self, todo: Sequence[Job]) -> None:
    """Before `todo` trains: the runs they start from that have no checkpoint
    here (a fresh clone has only their study_row.json) train again, then the
    upcycles they name are made from them."""
    folders, upcycles = set(), set()
    for job in todo:
      for assignment in job.own:
        value = assignment.partition("=")[2]
        if value in self.upcycles:
          upcycles.add(value)
          value = self.upcycles[value][0]
        if value in self.source_jobs:
          folders.add(value)
    again = [dataclasses.replace(self.source_jobs[f], needs_weights=True)
             for f in sorted(folders) if not has_weights(f)]
    if self.planning:
      if again:
        self.plan_jobs("sources", len(again), again)
      return
    if again:
      if self.verbose:
        print(f"{self.name}: {len(again)} run(s) that later rows start from have no checkpoint "
              "here (only their study_row.json): training them again", flush=True)
      before = [finished_row(dataclasses.replace(job, needs_weights=False)) for job in again]
      after = run_jobs(self.name, self.study.base, again, self.workers, self.verbose, self.shared)
      for job, old, new in zip(again, before, after):
        if old and not np.isclose(old["eval_loss"], new["eval_loss"], rtol=1e-5, atol=0):
          # Another machine's floating point: rows that finished from the
          # earlier weights are kept; say so rather than mix them silently.
          print(f"{self.name}: note: {job.out} trained again to eval loss "
                f"{new['eval_loss']:.6f}, not {old['eval_loss']:.6f} as before; the rows that "
                "started from its earlier weights are kept", flush=True)
    for out in sorted(upcycles):
      if not os.path.isdir(out):
        source, seed, kind = self.upcycles[out]
        _upcycle(source, out, seed, **self.study.upcycles[kind])

  def own(self, row: str, seed: int) -> Tuple[str, ...]:
    dirs = {r: os.path.join(d, f"seed_{seed}") for r, d in self.row_dir.items()}
    return tuple(_sources(a, dirs, self.study, self.workdir, seed, self.upcycles)
                 for a in self.study.rows[row])

  def probe(self, row: str):
    """The row's config before tuning (its sources' models not loaded)."""
    config = self.study.base()
    for assignment in (*self.study.rows[row], *self.overrides):
      if "{" not in assignment:
        apply_override(config, assignment)
    return config

  def tune_level(self, level: Sequence[str]) -> Dict[str, Dict]:
    """Sweeps each row's tunables one after the other (the learning rate
    first, then the balance coefficient at the chosen rate); returns row ->
    {'settings': {field: chosen}, 'sweeps': {field: {...}}}."""
    tuned = {}
    for row in level:
      if row in self.inherited:
        tuned[row] = {**self.inherited[row], "tuned_at": "base"}
        continue
      config = self.probe(row)
      sweeps = _sweeps(config, self.tune)
      tuned[row] = {"settings": {TUNABLE[s][0]: _field(config, TUNABLE[s][0]) for s in sweeps},
                    "sweeps": {}}
    for sweep in self.tune:
      key, candidates_of = TUNABLE[sweep]
      jobs, owners = [], []
      for row in level:
        settings = tuned[row]["settings"]
        if key not in settings or row in self.inherited:
          continue
        candidates = candidates_of(_field(self.probe(row), key))
        tuned[row]["sweeps"][key] = {"candidates": candidates}
        for value in candidates:
          trial = {**settings, key: value}
          jobs.append(self.tuning_job(row, trial))
          owners.append((row, value))
      rows = self.jobs_rows(f"tune {sweep}", jobs)
      for row in level:
        if key not in tuned[row]["settings"] or row in self.inherited:
          continue
        sweep_info = tuned[row]["sweeps"][key]
        losses = [r["eval_loss"] if r is not None else None
                  for (owner, _), r in zip(owners, rows) if owner == row]
        sweep_info["held_out_loss"] = losses
        if all(loss is None for loss in losses) and self.planning:
          continue   # not trained yet: plan with the row's own value
        sweep_info["chosen"] = choose(sweep_info["candidates"], losses)
        tuned[row]["settings"][key] = sweep_info["chosen"]
      self.extend_at_edges(level, tuned, key, sweep)
    return tuned

  def extend_at_edges(self, level: Sequence[str], tuned: Dict[str, Dict], key: str,
                      sweep: str):
    """Up to extend_edges times: every row whose choice is the largest
    (smallest) candidate also trains the next one beyond it, until the
    choice lies inside the swept range."""
    for _ in range(self.extend_edges):
      jobs, owners = [], []
      for row in level:
        info = tuned[row]["sweeps"].get(key)
        if row in self.inherited or not info or "chosen" not in info:
          continue
        value = edge_extension(key, info["candidates"], info["chosen"])
        if value is not None:
          jobs.append(self.tuning_job(row, {**tuned[row]["settings"], key: value}))
          owners.append((row, value))
      if not jobs:
        return
      for (row, value), result in zip(owners, self.jobs_rows(f"tune {sweep} (edge)", jobs)):
        info = tuned[row]["sweeps"][key]
        at = 0 if value < info["candidates"][0] else len(info["candidates"])
        info["candidates"].insert(at, value)
        info["held_out_loss"].insert(at, result["eval_loss"] if result is not None else None)
        if result is None and self.planning:
          continue   # not trained yet: plan the seeds at the choice so far
        info["chosen"] = choose(info["candidates"], info["held_out_loss"])
        tuned[row]["settings"][key] = info["chosen"]

  def tuning_job(self, row: str, settings: Dict[str, float]) -> Job:
    split = self.probe(row).data.train_split
    if "[" in split:
      raise ValueError(f"data.train_split={split!r} is already a slice: tuning holds out "
                       f"the last {self.study.tune_holdout}% of an unsliced train split")
    keep = 100 - self.study.tune_holdout
    extra = (*self.overrides, *(f"{k}={v!r}" for k, v in settings.items()),
             f"data.train_split={split}[:{keep}%]", f"data.eval_split={split}[{keep}%:]",
             "seed=0")
    out = os.path.join(self.workdir, row, "tune", _setting_name(settings))
    return Job(row, self.own(row, 0), extra, out, may_diverge=True)

  def run(self, seeds: int) -> Tuple[Dict[str, List[Dict]], Dict[str, Dict]]:
    runs, tuning = {}, {}
    for level in _levels(self.study):
      level = [row for row in level if row in self.rows]
      if not level:
        continue
      tuned = self.tune_level(level) if self.tune else {}
      jobs = []
      for row in level:
        settings = tuned.get(row, {}).get("settings", {})
        tuning[row] = tuned.get(row, {})
        self.row_dir[row] = os.path.join(self.workdir, row, *(
            [_setting_name(settings)] if settings else []))
      # Seed by seed, so that the runs finished first complete whole pairs.
      for seed in range(seeds):
        for row in level:
          settings = tuning[row].get("settings", {})
          extra = (*self.overrides, *(f"{k}={v!r}" for k, v in settings.items()), f"seed={seed}")
          jobs.append(Job(row, self.own(row, seed), extra,
                          os.path.join(self.row_dir[row], f"seed_{seed}")))
          if row in self.source_rows:
            self.source_jobs[jobs[-1].out] = jobs[-1]
      rows = self.jobs_rows("seeds", jobs)
      for job, row in zip(jobs, rows):
        runs.setdefault(job.row, []).append(row)
    return runs, tuning


def _inherited(workdir: str, scale: str, tune: Sequence[str]) -> Dict[str, Dict]:
  """At the large scale, each row's values tuned at the base scale (from
  <workdir>/results.json, when it has them for the same sweeps): the second
  scale measures the claims with the tuned settings instead of sweeping
  again at 4x the cost."""
  path = os.path.join(workdir, "results.json")
  if scale == "base" or not tune or not os.path.exists(path):
    return {}
  with open(path) as f:
    base = json.load(f)
  if sorted(base.get("tuned") or []) != sorted(tune):
    return {}
  return {row: {"settings": s["settings"], "sweeps": s.get("sweeps", {})}
          for row, s in base["rows"].items() if s.get("settings")}


def plan_study(name: str, seeds: int, workdir: str, overrides: Sequence[str] = (),
               tune: Optional[Sequence[str]] = None, scale: str = "base",
               rows: Optional[Sequence[str]] = None, extend_edges: int = 0,
               estimate: bool = True) -> List[Tuple]:
  """What run_study would train: (phase, runs, runs left to train, estimated
  seconds of those on a 2-core CPU, one at a time; 0 without `estimate`,
  which traces every model left to train). Before a sweep has run, the seeds
  are planned at the row's own values."""
  tune = _tune(name, tune)
  runner = _Runner(name, study_workdir(workdir, scale), _scaled(name, scale, overrides),
                   tune, 1, False, planning=True, inherited=_inherited(workdir, scale, tune),
                   rows=rows, extend_edges=extend_edges, studies_root=_studies_root(workdir))
  runner.estimate = estimate
  runner.run(seeds)
  return runner.plan


def _finished_rows(name: str, seeds: int, workdir: str, overrides: Sequence[str],
                   tune: Sequence[str], scale: str, selected: Sequence[str],
                   extend_edges: int) -> List[str]:
  """The rows outside `selected` whose every run (sweeps and seeds, with the
  rows they start from) is finished: a --rows run reports them too, so that
  its results.json keeps the claims on them rather than dropping them."""
  study = STUDIES[name]
  finished = []
  for row in study.rows:
    if row in selected:
      continue
    sources = {m.group(2) for a in study.rows[row] for m in _SOURCE.finditer(a)}
    plan = plan_study(name, seeds, workdir, overrides, tune, scale,
                      [r for r in study.rows if r == row or r in sources], extend_edges,
                      estimate=False)
    if all(todo == 0 for _, _, todo, _ in plan):
      finished.append(row)
  return finished


def _studies_root(workdir: str) -> str:
  """The folder that holds this study's workdir and its sibling studies'
  (not the scale's folder: <workdir>/large's parent is the study itself)."""
  return os.path.dirname(os.path.abspath(workdir))


def _tune(name: str, tune: Optional[Sequence[str]]) -> Tuple[str, ...]:
  tune = STUDIES[name].tune if tune is None else tuple(tune)
  unknown = [t for t in tune if t not in TUNABLE]
  if unknown:
    raise ValueError(f"--tune={','.join(tune)} is invalid: {unknown} are not sweeps; use "
                     f"any of {', '.join(TUNABLE)} or 'none'")
  return tuple(t for t in TUNABLE if t in tune)   # the learning rate first


def _scaled(name: str, scale: str, overrides: Sequence[str]) -> List[str]:
  if scale not in SCALES:
    raise ValueError(f"--scale={scale!r} is invalid: use one of {', '.join(SCALES)}")
  if scale == "large" and not STUDIES[name].large:
    raise ValueError(f"--scale=large is not defined for the study {name!r}: its rows set "
                     f"their own step counts (studies with a large scale: "
                     f"{', '.join(n for n, s in STUDIES.items() if s.large)})")
  return [*(STUDIES[name].large if scale == "large" else ()), *overrides]


def run_study(name: str, seeds: int, workdir: str, overrides: Sequence[str] = (),
              verbose: bool = True, tune: Optional[Sequence[str]] = None,
              scale: str = "base", workers: int = 1,
              rows: Optional[Sequence[str]] = None, extend_edges: int = 0) -> Dict:
  """Trains every row of STUDIES[name] for seeds 0..seeds-1 (after tuning
  each row, see _Runner) and writes results.json, results.md and results.png
  to the scale's folder (study_workdir); returns the results. tune: sweeps
  to run (None: the study's own; () none); rows: train only these (and the
  rows they start from); the other rows whose runs are all finished are
  reported too, and the claims between the reported rows judged; extend_edges:
  how many candidates a sweep may add beyond the edge its best value lies on
  (0: those of TUNABLE only)."""
  study = STUDIES[name]
  out_dir = study_workdir(workdir, scale)
  tune = _tune(name, tune)
  if rows:
    _selected_rows(study, rows)   # the one-line error for a bad --rows, before planning
    finished = _finished_rows(name, seeds, workdir, overrides, tune, scale, rows, extend_edges)
    if finished and verbose:
      print(f"{name}: also reported, their runs being finished here: {', '.join(finished)}",
            flush=True)
    rows = [*rows, *finished]
  runner = _Runner(name, out_dir, _scaled(name, scale, overrides), tune, workers, verbose,
                   planning=False, inherited=_inherited(workdir, scale, tune), rows=rows,
                   extend_edges=extend_edges, studies_root=_studies_root(workdir))
  runs, tuning = runner.run(seeds)
  results = {"study": name, "description": study.description, "seeds": seeds,
             "scale": scale, "overrides": runner.overrides, "tuned": list(runner.tune),
             "tune_holdout_percent": study.tune_holdout, "rows": {}, "claims": []}
  if len(runner.rows) < len(study.rows):
    results["rows_reported"] = runner.rows   # a subset: claims on other rows are left out
  for row in runner.rows:   # the study's order, whatever order they trained in
    rows = runs[row]
    summary = {"params": rows[0]["params"], "active_params": rows[0]["active_params"],
               "steps": rows[0]["steps"], **tuning[row]}
    for metric in ("eval_loss", "train_loss", "balance", "fraction_dropped",
                   "experts_per_token"):
      values = [r.get(metric) for r in rows]   # rows recorded before a metric existed lack it
      if all(v is not None for v in values):
        summary[metric] = dict(zip(("mean", "std"), mean_std(values)), values=values)
    curves = [r["balance_curve"] for r in rows]
    if curves[0]:  # MoE rows: max/mean load over training, mean over seeds
      steps = [step for step, _ in curves[0]]
      summary["balance_curve"] = {"steps": steps, "mean": np.mean(
          [[b for _, b in c[:len(steps)]] for c in curves], axis=0).tolist()}
    if row in study.curve_rows:
      steps = [step for step, _ in rows[0]["loss_curve"]]
      summary["loss_curve"] = {"steps": steps, "mean": np.mean(
          [[loss for _, loss in r["loss_curve"][:len(steps)]] for r in rows], axis=0).tolist()}
    results["rows"][row] = summary
  results["claims"] = judge(study.claims, results["rows"])
  write_results(results, out_dir)
  write_scales(workdir)
  return results


def judge(claims: Sequence[Claim], rows: Dict[str, Dict]) -> List[Dict]:
  """Each claim with both rows' mean ± std, the paired difference over seeds
  and its verdict (rows: results['rows'], with per-seed 'values')."""
  out = []
  for claim in claims:
    if claim.better not in rows or claim.worse not in rows:
      continue   # a run of some rows only (--rows)
    better, worse = rows[claim.better][claim.metric], rows[claim.worse][claim.metric]
    paired = paired_difference(better["values"], worse["values"])
    out.append({**dataclasses.asdict(claim), "better_mean": better["mean"],
                "better_std": better["std"], "worse_mean": worse["mean"],
                "worse_std": worse["std"], "paired": paired, "verdict": paired["verdict"]})
  return out


def rejudge(name: str, workdir: str, scale: str = "base") -> Dict:
  """Judges the claims of the results.json in the scale's folder again from
  its per-seed values (no training: after the claims or the statistics
  changed) and rewrites its results files. The claims are matched to the
  study's current ones by their rows and metric."""
  path = os.path.join(study_workdir(workdir, scale), "results.json")
  if not os.path.exists(path):
    raise ValueError(f"--rejudge needs {path}, which does not exist: run the study first")
  with open(path) as f:
    results = json.load(f)
  if results.get("study") != name:
    raise ValueError(f"--rejudge: {path} holds the study {results.get('study')!r}, not {name!r}")
  results["claims"] = judge(STUDIES[name].claims, results["rows"])
  results.setdefault("scale", scale)
  results.setdefault("tuned", [])
  write_results(results, study_workdir(workdir, scale))
  write_scales(workdir)
  return results


_SOURCE = re.compile(r"\{(?:(\w+):)?(\w+)\}")


def _sources(assignment: str, row_dirs: Dict[str, str], study: Study, workdir: str,
             seed: int, upcycles: Dict[str, Tuple[str, int, str]]) -> str:
  """`assignment` with {row} / {kind:row} replaced by folders; an upcycle's
  folder is recorded in `upcycles` (-> (source folder, seed, kind)) and made
  when a run that starts from it trains (_Runner.prepare_sources), once per
  seed and source folder."""
  def folder(match):
    kind, row = match.groups()
    if row not in row_dirs:
      raise ValueError(f"{assignment!r} names {row!r}, which is not a row of the study")
    if kind is None:
      return row_dirs[row]
    if kind not in study.upcycles:
      raise ValueError(f"{assignment!r} names the upcycle {kind!r}; the study has "
                       f"{sorted(study.upcycles)}")
    source = row_dirs[row]
    tag = os.path.relpath(os.path.dirname(source), workdir).replace(os.sep, "_")
    out = os.path.join(workdir, f"{tag}_{kind}", f"seed_{seed}")
    upcycles[out] = (source, seed, kind)
    return out
  return _SOURCE.sub(folder, assignment)


def _upcycle(source: str, out: str, seed: int, num_experts: int, top_k: int,
             **moe_fields) -> None:
  """Every FFN of the dense model in workdir `source` becomes num_experts
  copies of itself, top_k of them per token, renormalised (equal to the
  dense model at step 0); moe_fields: further MoEConfig fields (LoRA)."""
  import jax
  from moejax.config import MoEConfig, RouterConfig
  from moejax.convert.model_dir import save_model_dir
  from moejax.train.sources import load_any
  from moejax.convert.upcycle import upcycle
  config, variables, _ = load_any(source)
  moe = MoEConfig(router=RouterConfig(num_experts=num_experts, top_k=top_k,
                                      normalize_top_k=True),
                  d_model=config.d_model, d_ff=config.dense_d_ff, activation=config.activation,
                  dispatch="dropless", **moe_fields)
  config, variables = upcycle(config, variables, moe, rng=jax.random.PRNGKey(seed))
  save_model_dir(out, config, variables)
