"""A study's trainings as jobs: their configs, a cache of finished rows, a
pool of worker processes, and the cost estimate that `study.py --plan` prints.

A job is one training: a row's overrides (sources already resolved to
folders), then the extra assignments (--set, tuned values, the split of a
tuning run, the seed). It trains in its own folder; when it finishes, its
table row is written beside it (study_row.json, with the assignments it was
made from), so that running the study again reuses it instead of reloading
and re-evaluating the model; a job whose whole config a study beside it
already trained takes that run's row (shared_runs.py). A row is reused only
for the same assignments; folders in them (another row's run as train.init_from) are recorded relative
to the job's folder, so a committed study resumes from a clone anywhere.

With workers > 1, independent jobs train in that many processes (spawned;
each writes its progress to <job folder>/train.log). Two processes on a
2-core CPU finish two lm_tiny runs in 0.64x the time of one after the other
(94 s vs 148 s for 150 steps, measured 2026-12-07): the small models leave
part of each core idle. One SIGTERM or Ctrl-C stops every worker's run at a
checkpoint (worker_pool.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from moejax.models.params import active_params
from moejax.studies.comparison import _param_shapes, train_row
from moejax.studies.shared_runs import ROW_FILE, SharedRuns, config_of
from moejax.studies.worker_pool import run_in_workers

# The cost model of --plan: a 2-core CPU like CI's trains lm_tiny (0.82M
# active parameters, 2048 tokens a step) at ~3.2 steps/s, i.e. ~3e10 FLOP/s
# of 6 * active * tokens, plus ~25 s of start-up, compilation and evaluation.
CPU_FLOPS = 3.0e10
START_SECONDS = 25.0
# The ViT studies' runs (17 tokens an image, 0.2M parameters) took 1.7x to
# 2.4x the time of their FLOPs at that rate where LM runs took 1.3x (runs of
# vit_routers and moe_vs_dense / balancing on 2 workers, 2026-12-07; Soft
# MoE's dense dispatch 4.7x): small matmuls use the cores less well.
VIT_SLOWDOWN = 1.6
# PEER's product-key retrieval (top-k over the sub-keys, row gathers from the
# pool and the backward's scatter-adds into it) took 24x the time of its
# FLOPs at that rate where the top-2 8x64 rows trained beside it took 2.0x
# (the peer study's committed runs, 2 workers, 2026-12-07): 12. Scoring the
# study's small pool whole (retrieval_ffn's 'dense' method) and keeping the
# sub-key top-k a TopK (not a full sort) then cut its train step from 1230 to
# 570 ms (benchmark.py --train_config, lm_study shapes, 2026-12-08):
# 12 x 570 / 1230.
RETRIEVAL_SLOWDOWN = 5.6


@dataclasses.dataclass(frozen=True)
class Job:
  """One training of a study: base() + own + extra, in folder `out`."""
  row: str
  own: Tuple[str, ...]     # the row's overrides, {sources} resolved
  extra: Tuple[str, ...]   # --set, tuned values, tuning split, seed
  out: str
  # A sweep candidate: a run that diverges is a result (never chosen), not
  # an error that stops the study.
  may_diverge: bool = False
  # Later rows start from this run's weights: it is finished only with its
  # checkpoint, which is not committed (a fresh clone trains it again; the
  # training being deterministic, to the same row).
  needs_weights: bool = False

  @property
  def assignments(self) -> List[str]:
    return [*self.own, *self.extra]


def job_config(base: Callable, job: Job):
  """The job's ConfigDict; a row that starts from another run's weights gets
  that run's model plus its own model.* overrides. Raises ValueError."""
  config = config_of(base, job.assignments)
  if config.train.init_from:
    config = _from_source(config, job.own)
  return config


def _from_source(config, own: Sequence[str]):
  """The row's config with the model of its train.init_from, plus the row's
  own model.* overrides (--set's model fields shaped the source already)."""
  from moejax.train.init_from import resolve_model
  model = {}
  for assignment in own:
    key = assignment.partition("=")[0]
    if key.startswith("model."):
      node = config
      for part in key.split("."):
        node = node[part]
      model[key] = node
  return resolve_model(config, model)[0]


def recorded_assignments(job: Job) -> List[str]:
  """The job's assignments as study_row.json records them: absolute folders
  relative to the job's folder."""
  out = os.path.abspath(job.out)

  def portable(assignment: str) -> str:
    key, _, value = assignment.partition("=")
    return f"{key}={os.path.relpath(value, out)}" if os.path.isabs(value) else assignment
  return [portable(a) for a in job.assignments]


def has_weights(folder: str) -> bool:
  """Whether a run's folder holds its checkpoint (not only its study_row.json)."""
  checkpoints = os.path.join(folder, "checkpoints")
  return os.path.isdir(checkpoints) and bool(os.listdir(checkpoints))


def finished_row(job: Job) -> Optional[Dict]:
  """The job's table row if it finished with these very assignments (and,
  where later rows start from it, still has its checkpoint)."""
  path = os.path.join(job.out, ROW_FILE)
  if not os.path.exists(path) or (job.needs_weights and not has_weights(job.out)):
    return None
  with open(path) as f:
    saved = json.load(f)
  return saved["row"] if saved.get("assignments") == recorded_assignments(job) else None


def _write_row(job: Job, row: Dict, **extra) -> None:
  from moejax.train.guarantees import atomic_write_text
  os.makedirs(job.out, exist_ok=True)
  atomic_write_text(os.path.join(job.out, ROW_FILE),
                    json.dumps({"assignments": recorded_assignments(job), "row": row, **extra},
                               indent=1))


def shared_row(base: Callable, job: Job, shared: Optional[SharedRuns],
               record: bool) -> Optional[Dict]:
  """The row of a finished run elsewhere under shared.root with this job's
  very config (renamed to the job's row); record: write it as the job's own."""
  if job.needs_weights:
    return None   # another study's row comes without weights in this job's folder
  found = shared.find(config_of(base, job.assignments)) if shared else None
  if found is None:
    return None
  path, row = found
  row = {**row, "config": job.row}
  if record:
    _write_row(job, row, reused_from=os.path.relpath(path, os.path.abspath(job.out)))
  return row


def _train(base: Callable, job: Job, verbose: bool) -> Dict:
  """Trains the job (resuming) and records its row. A sweep candidate that
  stops on a non-finite loss (a too-large learning rate) gives a row with
  eval_loss None and its error; any other run's TrainingError propagates."""
  from moejax.train import TrainingError
  try:
    row = train_row(job.row, job_config(base, job), job.out, verbose=verbose)
  except TrainingError as err:
    if not job.may_diverge:
      raise
    row = {"eval_loss": None, "error": str(err)}
  _write_row(job, row)
  return row


def _train_in_worker(study: str, job: Job) -> Dict:
  """A worker process's job: its output goes to <out>/train.log."""
  from moejax.studies.catalogue import STUDIES
  os.makedirs(job.out, exist_ok=True)
  with open(os.path.join(job.out, "train.log"), "a", buffering=1) as log, \
      contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
    return _train(STUDIES[study].base, job, verbose=True)


def run_jobs(study: str, base: Callable, jobs: Sequence[Job], workers: int = 1,
             verbose: bool = True, shared: Optional[SharedRuns] = None) -> List[Dict]:
  """The rows of `jobs` (in order), training the unfinished ones, `workers`
  at a time in worker processes (1: in this process). A job whose config
  another study under shared.root already trained takes that run's row."""
  rows: List[Optional[Dict]] = [finished_row(job) for job in jobs]
  say = print if verbose else (lambda *a, **k: None)
  for i, job in enumerate(jobs):
    if rows[i] is None:
      rows[i] = shared_row(base, job, shared, record=True)
      if rows[i] is not None:
        say(f"{study}: {job.row} -> {job.out}: the same config was trained in another "
            "study; its row is reused", flush=True)
  todo = [i for i, row in enumerate(rows) if row is None]
  if not todo:
    return rows
  if workers <= 1:
    for n, i in enumerate(todo):
      say(f"\n=== {study}: {jobs[i].row} [{n + 1}/{len(todo)}] -> {jobs[i].out}", flush=True)
      rows[i] = _train(base, jobs[i], verbose)
    return rows
  start = time.time()
  say(f"{study}: {len(todo)} runs on {workers} workers (progress in each run's train.log)",
      flush=True)
  finished = []

  def record(n: int, row: Dict) -> None:
    i = todo[n]
    rows[i] = row
    finished.append(i)
    loss = row.get("eval_loss")
    say(f"  [{len(finished)}/{len(todo)}] {jobs[i].row} -> {jobs[i].out}: eval loss "
        f"{'diverged' if loss is None else f'{loss:.4f}'} ({time.time() - start:.0f} s)",
        flush=True)

  run_in_workers(_train_in_worker, [(study, jobs[i]) for i in todo], workers, record)
  return rows


def estimated_seconds(base: Callable, job: Job) -> float:
  """--plan's estimate of one job on a 2-core CPU (see CPU_FLOPS): right to
  about ±30% for the LM studies (MoE rows run slower per FLOP than dense),
  PEER and DS-MoE included, and the ViT rows other than Soft MoE."""
  from moejax.train.config import experiment_from_config
  config = config_of(base, job.assignments)
  if config.train.get("init_from"):
    # Its source may not exist yet: estimate the row's own model. Adapters
    # come with the source's upcycle, so a frozen-base mode is left out too.
    config.train.init_from = None
    config.train.trainable = "all"
  exp = experiment_from_config(config)
  router = exp.model.moe.router if exp.model.moe_layers else None
  # DS-MoE trains every routed expert: its training FLOPs are not its
  # (sparse) inference's.
  active = active_params(exp.model, _param_shapes(exp),
                         router.num_experts if router and router.dense_training else None)
  if exp.model.kind == "lm":
    items = exp.data.seq_len
    slowdown = RETRIEVAL_SLOWDOWN if router and router.name == "product_key" else 1.0
  else:
    items = (exp.model.vit.image_size // exp.model.vit.patch_size) ** 2 + 1
    slowdown = VIT_SLOWDOWN
  flops = 6 * active * items * exp.data.batch_size * exp.train.num_steps
  return START_SECONDS + slowdown * flops / CPU_FLOPS
