"""train_and_evaluate: the training loop behind experiments/train.py.

Order of work, so that bad input never leaves a half-written workdir:
config (validated by the caller) -> dataset opened -> workdir checkpoints
checked against the config -> state initialised or restored -> steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging as absl_logging

from moejax.data import make_datasets, unigram_cross_entropy
from moejax.models import build_model
from moejax.parallel import (batch_sharding, check_experiment_on_mesh, make_mesh, replicated,
                             tree_shardings)
from moejax.train.checkpoint import CheckpointError, Checkpointer
from moejax.train.init_from import initial_variables
from moejax.train.guarantees import WorkdirLock, atomic_write_text, prepare_workdir
from moejax.train.config import ExperimentConfig
from moejax.train.optim import learning_rate_schedule, make_optimizer
from moejax.train.plots import write_plots
from moejax.train.step import all_finite, init_state, make_eval_step, make_train_step
from moejax.train.writers import MetricsWriter


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. a non-finite loss); the message is one line."""


@dataclasses.dataclass
class RunSummary:
  """What a run reached. `stopped` is None when it ran to num_steps."""

  step: int
  train_loss: float
  eval: Dict[str, float]
  baseline_loss: Optional[float]
  items_per_second: float
  item_name: str
  checkpoint_dir: str
  plots: List[str]
  stopped: Optional[str]
  history: List[Dict[str, float]]


def _format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class StopFlag:
  """Set by SIGTERM or a first Ctrl-C (SIGINT), main thread only; polled
  between steps, so the run saves a checkpoint and ends cleanly. A first
  Ctrl-C puts the previous SIGINT handler back: a second one aborts at once."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.reason: Optional[str] = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def _handle(self, signum, frame):
    del frame
    self.reason = signal.Signals(signum).name
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, self._previous[signal.SIGINT])

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


def _example_inputs(exp: ExperimentConfig) -> jax.Array:
  """Zeros shaped like one global batch of inputs."""
  m, batch = exp.model, exp.data.batch_size
  if m.kind == "lm":
    return jnp.zeros((batch, exp.data.seq_len), jnp.int32)
  return jnp.zeros((batch, m.vit.image_size, m.vit.image_size, m.vit.num_channels), jnp.float32)


def check_on_devices(exp: ExperimentConfig, devices: Optional[Sequence] = None) -> dict:
  """{axis: size} of exp's mesh on `devices` (default: all of the job's);
  ValueError (one line, naming the field) when exp cannot run on it. Nothing
  is compiled."""
  devices = jax.devices() if devices is None else devices
  sizes = exp.mesh.shape(len(devices))
  check_experiment_on_mesh(exp, sizes, devices[0].platform)
  return sizes


def _summarize_window(window: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
  """Mean of each metric over the steps of a logging window."""
  return {k: np.mean([m[k] for m in window], axis=0) for k in window[0]}


def _print_now(line: str) -> None:
  """Progress goes to stdout on process 0 only; the other processes of a
  multi-host job log it at INFO (shown with --verbosity=0)."""
  if jax.process_index() == 0:
    print(line, flush=True)
  else:
    absl_logging.info("%s", line)


def train_and_evaluate(exp: ExperimentConfig, workdir: str,
                       log: Callable[[str], None] = _print_now,
                       devices: Optional[Sequence] = None) -> RunSummary:
  """Trains exp in workdir (resuming from its latest checkpoint) and evaluates,
  on the mesh exp.mesh makes of `devices` (default: every device of the job,
  all hosts).

  Raises ValueError for a config the devices cannot run, DataError /
  CheckpointError / TrainingError (one-line messages).
  """
  sizes = check_on_devices(exp, devices)
  mesh = make_mesh(exp.mesh, devices)
  with jax.set_mesh(mesh):
    datasets = make_datasets(exp.data, exp.model)
    workdir = prepare_workdir(workdir)
    lock = WorkdirLock(workdir).acquire() if jax.process_index() == 0 else None
    try:
      return _train(exp, workdir, datasets, log, mesh, sizes)
    finally:
      if lock is not None:
        lock.release()


class _Run:
  """The state of one training run and what its hooks need: the compiled
  steps, the data, the checkpointer and the metrics writer.

  Construction opens everything in the order that keeps a failure from
  leaving a half-written workdir: model and shardings -> restore (verified) ->
  config.json -> metrics writer.
  """

  def __init__(self, exp: ExperimentConfig, workdir: str, datasets, log: Callable[[str], None],
               mesh):
    self.exp, self.cfg, self.datasets, self.log, self.mesh = exp, exp.train, datasets, log, mesh
    self.is_lm = exp.model.kind == "lm"
    self.items_per_step = exp.data.batch_size * (exp.data.seq_len if self.is_lm else 1)
    self.item_name = "tokens" if self.is_lm else "examples"
    self.workdir = workdir
    model = build_model(exp.model)
    optimizer = make_optimizer(self.cfg)
    # Jitted: evaluated eagerly, each of the schedule's ops would compile on its own.
    self.schedule = jax.jit(learning_rate_schedule(self.cfg))
    self.ckpt = Checkpointer(workdir, self.cfg.keep_checkpoints, self.cfg.async_checkpointing)

    # Params and optimizer state are created already placed by the sharding
    # rules; batches are split over the batch axes; metrics come back replicated.
    init_fn = lambda: init_state(model, optimizer, jax.random.key(exp.seed), _example_inputs(exp))
    state_sharding = tree_shardings(jax.eval_shape(init_fn), mesh)
    self.data_sharding, scalars = batch_sharding(mesh), replicated(mesh)
    self.state = jax.jit(init_fn, out_shardings=state_sharding)()
    self.train_iter = datasets.make_train_iterator()
    self.last_saved = self._restore()
    if self.last_saved is None and self.cfg.init_from:
      self.state = self._initialized_from(self.cfg.init_from, optimizer, state_sharding)
    if jax.process_index() == 0:
      atomic_write_text(os.path.join(workdir, "config.json"),
                        json.dumps(exp.raw, indent=2, sort_keys=True))
    self.start_step = int(self.state["step"])
    self.writer = MetricsWriter(workdir, self.start_step, enabled=jax.process_index() == 0,
                                log=log)
    # Rows of earlier processes, so that a resumed run's final train loss
    # averages the same steps as an uninterrupted run's.
    self.history = self.writer.train_history()
    self.pending: List = []        # (step, device metrics) not fetched yet
    self.window: List[Dict] = []   # host metrics since the last progress line

    self.train_step = jax.jit(make_train_step(model, optimizer, self.cfg, exp.seed),
                              in_shardings=(state_sharding, self.data_sharding),
                              out_shardings=(state_sharding, scalars), donate_argnums=0)
    self._eval_step = jax.jit(make_eval_step(model),
                              in_shardings=(state_sharding, self.data_sharding),
                              out_shardings=scalars)
    self._finite = jax.jit(all_finite, out_shardings=scalars)
    self._eval_data = [self.to_global(batch) for batch in datasets.eval_batches()]

  def _restore(self) -> Optional[int]:
    """Restores the newest verified checkpoint into state and the data
    iterator; returns its step (None when the workdir has none)."""
    restored = self.ckpt.restore_latest(self.state, self.exp.raw, self.log)
    if restored is None:
      return None
    step, self.state, data_state = restored
    if data_state.get("content_sha256") != self.datasets.content_sha256:
      raise CheckpointError(
          f"the checkpoint (step {step}, {self.ckpt.directory}) was trained on "
          f"{self.exp.data.name} with content sha256 {data_state.get('content_sha256')}, but "
          f"the copy in data.data_dir has {self.datasets.content_sha256} (built from another "
          "Python version?); resume with the data_dir it was trained on, or use a new --workdir")
    self.train_iter.set_state(data_state["iterator"])
    self.log(f"resumed from {self.ckpt.directory} at step {step}")
    return step

  def _initialized_from(self, source: str, optimizer, state_sharding) -> dict:
    """Step-0 state holding train.init_from's weights and a fresh optimizer state."""
    loaded = initial_variables(self.exp.model, source, self.state)
    host = jax.tree.map(np.asarray, loaded)   # the same on every process: replicated input

    def fresh(params, router_state):
      return {"step": jnp.zeros((), jnp.int32), "params": params,
              "opt_state": optimizer.init(params), "router_state": router_state}
    state = jax.jit(fresh, out_shardings=state_sharding)(host["params"], host["router_state"])
    self.log(f"initialised from {source} ({sum(x.size for x in jax.tree.leaves(host['params'])):,} "
             "parameters; fresh optimizer state)")
    return state

  def to_global(self, batch):
    """This host's rows of a batch -> arrays over the whole mesh."""
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(self.data_sharding, a), batch)

  def run_step(self, step: int) -> None:
    """One optimizer step; its metrics stay on device until flush()."""
    self.state, metrics = self.train_step(self.state, self.to_global(next(self.train_iter)))
    self.pending.append((step, metrics))
    self.ckpt.check_for_errors()  # an async save that failed stops the run here

  def flush(self) -> None:
    """Fetches pending metrics; stops at the first non-finite loss."""
    for step, metrics in jax.device_get(self.pending):
      if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["total_loss"])):
        raise self.stop_error(f"loss is {float(metrics['total_loss'])} at step {step}")
      self.window.append(metrics)
    self.pending.clear()

  def evaluate(self) -> Dict[str, float]:
    sums = [jax.device_get(self._eval_step(self.state, batch)) for batch in self._eval_data]
    count = max(sum(s["count"] for s in sums), 1.0)
    loss = float(sum(s["ce_sum"] for s in sums) / count)
    out = {"loss": loss, "accuracy": float(sum(s["correct_sum"] for s in sums) / count)}
    if self.is_lm:
      out["perplexity"] = math.exp(min(loss, 50.0))
      # Loss is per token; a token of a tokenizer covers several bytes of text.
      out["bits_per_byte"] = loss / math.log(2) / self.datasets.bytes_per_token
    return out

  def save(self, step: int) -> None:
    """Checkpoints step (once), never with non-finite parameters."""
    if step == self.last_saved:
      return
    if not bool(self._finite(self.state["params"])):
      raise self.stop_error(f"parameters are not finite at step {step}")
    self.ckpt.save(step, self.state, {"iterator": self.train_iter.get_state(),
                                      "content_sha256": self.datasets.content_sha256},
                   self.exp.raw)
    self.last_saved = step

  def stop_error(self, problem: str) -> TrainingError:
    kept = (f"the last good checkpoint (step {self.last_saved}) is kept in "
            f"{self.ckpt.directory}" if self.last_saved is not None else
            "no checkpoint was written")
    return TrainingError(f"{problem}; stopped. {kept}. Try a lower train.learning_rate")

  def close(self) -> None:
    self.ckpt.close()
    self.writer.close()


class _Progress:
  """Every log_every steps (and the last): train metrics to the writer and a
  progress line with speed and ETA. Speed counts from the end of the first
  step, which includes compilation."""

  def __init__(self, run: _Run):
    self.run = run
    self.t_start = time.perf_counter()
    self.t_compiled: Optional[float] = None
    self.t_window, self.steps_in_window = self.t_start, 0

  def __call__(self, step: int, last: bool) -> None:
    run, cfg = self.run, self.run.cfg
    self.steps_in_window += 1
    if self.t_compiled is None:
      jax.block_until_ready(run.pending[-1][1]["loss"])
      self.t_compiled = time.perf_counter()
      self.t_window, self.steps_in_window = self.t_compiled, 0
    if step % cfg.log_every and not last:
      return
    run.flush()
    now = time.perf_counter()
    rate = self.steps_in_window / max(now - self.t_window, 1e-9) if self.steps_in_window else 0.0
    self.t_window, self.steps_in_window = now, 0
    summary = _summarize_window(run.window)
    run.window.clear()
    summary["learning_rate"] = np.float32(run.schedule(step - 1))
    summary["steps_per_second"] = np.float32(rate)
    run.writer.write(step, "train", summary)
    run.history.append({"step": step, "loss": float(summary["loss"])})
    eta = (cfg.num_steps - step) / rate if rate else float("nan")
    moe = ""
    if "balance" in summary:
      moe = (f" | balance {summary['balance'].mean():.2f} drop "
             f"{summary['fraction_dropped'].mean():.1%}")
    run.log(f"step {step:5d}/{cfg.num_steps} | loss {summary['loss']:.4f} | "
            f"lr {summary['learning_rate']:.2e} | {rate:.1f} steps/s | "
            f"{rate * run.items_per_step / 1e3:.1f}k {run.item_name}/s{moe} | "
            f"eta {_format_duration(eta) if rate else '?'}")

  def items_per_second(self, steps_run: int) -> float:
    elapsed = time.perf_counter() - (self.t_compiled or self.t_start)
    return max(steps_run - 1, 0) * self.run.items_per_step / max(elapsed, 1e-9)


class _Evaluation:
  """Every eval_every steps (and the last): evaluate, write, log."""

  def __init__(self, run: _Run):
    self.run = run
    self.last: Optional[Dict[str, float]] = None

  def __call__(self, step: int, last: bool) -> None:
    every = self.run.cfg.eval_every
    if not ((every and step % every == 0) or last):
      return
    self.run.flush()
    self.last = self.run.evaluate()
    self.run.writer.write(step, "eval", self.last)
    self.run.log(f"  eval @ {step}: " + "  ".join(f"{k} {v:.4f}" for k, v in self.last.items()))


class _Checkpointing:
  """Every checkpoint_every steps (and the last): save."""

  def __init__(self, run: _Run):
    self.run = run

  def __call__(self, step: int, last: bool) -> None:
    if step % self.run.cfg.checkpoint_every == 0 or last:
      self.run.flush()
      self.run.save(step)


class _ProfileTrace:
  """train.profile_steps=(a, b): a jax.profiler trace of steps a..b in
  <workdir>/profile (TensorBoard's profile plugin or Perfetto read it)."""

  def __init__(self, run: _Run):
    self.run, self.active = run, False
    self.steps = run.cfg.profile_steps

  def before(self, step: int) -> None:
    if self.steps and step == self.steps[0]:
      jax.profiler.start_trace(os.path.join(self.run.workdir, "profile"))
      self.active = True

  def __call__(self, step: int, last: bool) -> None:
    if self.active and (step == self.steps[1] or last):
      jax.block_until_ready(self.run.state)
      jax.profiler.stop_trace()
      self.active = False
      self.run.log(f"  profile of steps {self.steps[0]}..{step} written to "
                   f"{os.path.join(self.run.workdir, 'profile')}")

  def abandon(self) -> None:
    """Stops a trace the run left open (an error mid-trace)."""
    if self.active:
      jax.profiler.stop_trace()
      self.active = False


def _train(exp: ExperimentConfig, workdir: str, datasets, log: Callable[[str], None], mesh,
           sizes: dict) -> RunSummary:
  run = _Run(exp, workdir, datasets, log, mesh)
  cfg = run.cfg
  num_params = sum(x.size for x in jax.tree.leaves(run.state["params"]))
  mesh_text = " x ".join(f"{k}={v}" for k, v in sizes.items() if v > 1) or "none"
  log(f"model: {exp.model.kind}, {num_params / 1e6:.2f}M params, MoE blocks "
      f"{list(exp.model.moe_layers) or 'none'}; data: {exp.data.name}"
      f"{f' (sha256 {datasets.content_sha256[:12]})' if datasets.content_sha256 else ''}, batch "
      f"{exp.data.batch_size}; {cfg.num_steps} steps on {mesh.devices.size} "
      f"{jax.devices()[0].platform} device(s) in {jax.process_count()} process(es), "
      f"mesh {mesh_text}")
  baseline = unigram_cross_entropy(datasets, exp.model.lm.vocab_size) if run.is_lm else None
  if baseline is not None:
    log(f"unigram baseline (context-free model): {baseline:.3f} nats/token")

  profile = _ProfileTrace(run)
  progress, evaluation = _Progress(run), _Evaluation(run)
  hooks = (progress, profile, evaluation, _Checkpointing(run))  # in this order, every step
  stopped, step = None, run.start_step
  with StopFlag() as stop:
    try:
      while step < cfg.num_steps:
        profile.before(step + 1)
        step += 1
        run.run_step(step)
        if stop.reason is None and step == cfg.stop_at_step:
          stop.reason = f"train.stop_at_step={cfg.stop_at_step}"
        stopping = stop.reason  # read once: SIGTERM may arrive at any point below
        last = step == cfg.num_steps or stopping is not None
        for hook in hooks:
          hook(step, last)
        if stopping is not None:
          stopped = stopping
          break
    finally:
      profile.abandon()
      run.close()
  items_per_second = progress.items_per_second(step - run.start_step)
  final_eval = evaluation.last if evaluation.last is not None else run.evaluate()
  plots = write_plots(workdir, list(exp.model.moe_layers)) if cfg.plots and \
      jax.process_index() == 0 else []
  tail = [h["loss"] for h in run.history[-max(1, len(run.history) // 10):]]
  return RunSummary(step=step, train_loss=float(np.mean(tail)) if tail else float("nan"),
                    eval=final_eval, baseline_loss=baseline,
                    items_per_second=items_per_second,
                    item_name=run.item_name, checkpoint_dir=run.ckpt.directory, plots=plots,
                    stopped=stopped, history=run.history)
