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

from moejax.data import make_datasets, unigram_cross_entropy
from moejax.models import build_model
from moejax.parallel import (batch_sharding, check_experiment_on_mesh, make_mesh, replicated,
                             tree_shardings)
from moejax.train.checkpoint import CheckpointError, Checkpointer
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


class _StopFlag:
  """Set by SIGTERM (main thread only); polled between steps."""

  def __init__(self):
    self.reason: Optional[str] = None
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.reason = "SIGTERM"

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _example_inputs(exp: ExperimentConfig) -> jax.Array:
  """Zeros shaped like one global batch of inputs."""
  m, batch = exp.model, exp.data.batch_size
  if m.kind == "lm":
    return jnp.zeros((batch, exp.data.seq_len), jnp.int32)
  return jnp.zeros((batch, m.image_size, m.image_size, m.num_channels), jnp.float32)


def check_on_devices(exp: ExperimentConfig, devices: Optional[Sequence] = None) -> dict:
  """{axis: size} of exp's mesh on `devices` (default: all of the job's);
  ValueError (one line, naming the field) when exp cannot run on it. Nothing
  is compiled."""
  sizes = exp.mesh.shape(len(jax.devices() if devices is None else devices))
  check_experiment_on_mesh(exp, sizes)
  return sizes


def _summarize_window(window: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
  """Mean of each metric over the steps of a logging window."""
  return {k: np.mean([m[k] for m in window], axis=0) for k in window[0]}


def _print_now(line: str) -> None:
  print(line, flush=True)


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


def _train(exp: ExperimentConfig, workdir: str, datasets, log: Callable[[str], None], mesh,
           sizes: dict) -> RunSummary:
  cfg = exp.train
  is_lm = exp.model.kind == "lm"
  items_per_step = exp.data.batch_size * (exp.data.seq_len if is_lm else 1)
  item_name = "tokens" if is_lm else "examples"

  model = build_model(exp.model)
  optimizer = make_optimizer(cfg)
  schedule = learning_rate_schedule(cfg)
  ckpt = Checkpointer(workdir, cfg.keep_checkpoints, cfg.async_checkpointing)

  # Params and optimizer state are created already placed by the sharding
  # rules; batches are split over the batch axes; metrics come back replicated.
  init_fn = lambda: init_state(model, optimizer, jax.random.key(exp.seed), _example_inputs(exp))
  state_sharding = tree_shardings(jax.eval_shape(init_fn), mesh)
  data_sharding, scalars = batch_sharding(mesh), replicated(mesh)
  state = jax.jit(init_fn, out_shardings=state_sharding)()

  def to_global(batch):
    """This host's rows of a batch -> arrays over the whole mesh."""
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(data_sharding, a),
                        batch)
  train_iter = datasets.make_train_iterator()
  restored = ckpt.restore_latest(state, exp.raw, log)
  latest = None
  if restored is not None:
    latest, state, data_state = restored
    if data_state.get("content_sha256") != datasets.content_sha256:
      raise CheckpointError(
          f"the checkpoint (step {latest}, {ckpt.directory}) was trained on {exp.data.name} with "
          f"content sha256 {data_state.get('content_sha256')}, but the copy in data.data_dir "
          f"has {datasets.content_sha256} (built from another Python version?); resume with the "
          "data_dir it was trained on, or use a new --workdir")
    train_iter.set_state(data_state["iterator"])
    log(f"resumed from {ckpt.directory} at step {latest}")
  if jax.process_index() == 0:
    atomic_write_text(os.path.join(workdir, "config.json"),
                      json.dumps(exp.raw, indent=2, sort_keys=True))
  start_step = int(state["step"])
  writer = MetricsWriter(workdir, start_step, enabled=jax.process_index() == 0, log=log)
  num_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  mesh_text = " x ".join(f"{k}={v}" for k, v in sizes.items() if v > 1) or "none"
  log(f"model: {exp.model.kind}, {num_params / 1e6:.2f}M params, MoE blocks "
      f"{list(exp.model.moe_layers) or 'none'}; data: {exp.data.name}"
      f"{f' (sha256 {datasets.content_sha256[:12]})' if datasets.content_sha256 else ''}, batch "
      f"{exp.data.batch_size}; {cfg.num_steps} steps on {mesh.devices.size} "
      f"{jax.devices()[0].platform} device(s) in {jax.process_count()} process(es), "
      f"mesh {mesh_text}")

  baseline = unigram_cross_entropy(datasets, exp.model.vocab_size) if is_lm else None
  if baseline is not None:
    log(f"unigram baseline (context-free model): {baseline:.3f} nats/token")

  train_step = jax.jit(make_train_step(model, optimizer, cfg, exp.seed),
                       in_shardings=(state_sharding, data_sharding),
                       out_shardings=(state_sharding, scalars), donate_argnums=0)
  eval_step = jax.jit(make_eval_step(model), in_shardings=(state_sharding, data_sharding),
                      out_shardings=scalars)
  finite = jax.jit(all_finite, out_shardings=scalars)
  eval_data = [to_global(batch) for batch in datasets.eval_batches()]

  def evaluate(state) -> Dict[str, float]:
    sums = [jax.device_get(eval_step(state, batch)) for batch in eval_data]
    count = max(sum(s["count"] for s in sums), 1.0)
    loss = float(sum(s["ce_sum"] for s in sums) / count)
    out = {"loss": loss, "accuracy": float(sum(s["correct_sum"] for s in sums) / count)}
    if is_lm:
      out["perplexity"] = math.exp(min(loss, 50.0))
      out["bits_per_byte"] = loss / math.log(2)
    return out

  last_saved = latest

  def stop_error(problem: str) -> TrainingError:
    kept = (f"the last good checkpoint (step {last_saved}) is kept in {ckpt.directory}"
            if last_saved is not None else "no checkpoint was written")
    return TrainingError(f"{problem}; stopped. {kept}. Try a lower train.learning_rate")

  def save(step: int, state) -> None:
    nonlocal last_saved
    if step == last_saved:
      return
    if not bool(finite(state["params"])):
      raise stop_error(f"parameters are not finite at step {step}")
    ckpt.save(step, state, {"iterator": train_iter.get_state(),
                            "content_sha256": datasets.content_sha256}, exp.raw)
    last_saved = step

  pending: List = []         # (step, device metrics) since the last flush
  window: List[Dict] = []    # host metrics since the last progress line
  history = writer.train_history()  # rows of earlier processes, so a resumed run's
  # final train loss averages the same steps as an uninterrupted run's

  def flush() -> None:
    """Fetch pending metrics; stop at the first non-finite loss."""
    for step, metrics in jax.device_get(pending):
      if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["total_loss"])):
        raise stop_error(f"loss is {float(metrics['total_loss'])} at step {step}")
      window.append(metrics)
    pending.clear()

  stopped, last_eval = None, None
  step = start_step
  t_start = time.perf_counter()
  t_window, steps_in_window, t_compiled = t_start, 0, None
  with _StopFlag() as stop:
    try:
      while step < cfg.num_steps:
        batch = to_global(next(train_iter))
        state, metrics = train_step(state, batch)
        step += 1
        steps_in_window += 1
        pending.append((step, metrics))
        ckpt.check_for_errors()  # an async save that failed stops the run here
        if t_compiled is None:  # the first step includes compilation
          jax.block_until_ready(metrics["loss"])
          t_compiled = time.perf_counter()
          t_window, steps_in_window = t_compiled, 0
        if stop.reason is None and step == cfg.stop_at_step:
          stop.reason = f"train.stop_at_step={cfg.stop_at_step}"
        stopping = stop.reason  # read once: SIGTERM may arrive at any point below
        last = step == cfg.num_steps or stopping is not None
        if step % cfg.log_every == 0 or last:
          flush()
          now = time.perf_counter()
          rate = steps_in_window / max(now - t_window, 1e-9) if steps_in_window else 0.0
          t_window, steps_in_window = now, 0
          summary = _summarize_window(window)
          window.clear()
          summary["learning_rate"] = np.float32(schedule(step - 1))
          summary["steps_per_second"] = np.float32(rate)
          writer.write(step, "train", summary)
          history.append({"step": step, "loss": float(summary["loss"])})
          eta = (cfg.num_steps - step) / rate if rate else float("nan")
          moe = ""
          if "balance" in summary:
            moe = (f" | balance {summary['balance'].mean():.2f} drop "
                   f"{summary['fraction_dropped'].mean():.1%}")
          log(f"step {step:5d}/{cfg.num_steps} | loss {summary['loss']:.4f} | "
              f"lr {summary['learning_rate']:.2e} | {rate:.1f} steps/s | "
              f"{rate * items_per_step / 1e3:.1f}k {item_name}/s{moe} | "
              f"eta {_format_duration(eta) if rate else '?'}")
        if (cfg.eval_every and step % cfg.eval_every == 0) or last:
          flush()
          last_eval = evaluate(state)
          writer.write(step, "eval", last_eval)
          log(f"  eval @ {step}: " + "  ".join(f"{k} {v:.4f}" for k, v in last_eval.items()))
        if step % cfg.checkpoint_every == 0 or last:
          flush()
          save(step, state)
        if stopping is not None:
          stopped = stopping
          break
    except (TrainingError, CheckpointError):
      ckpt.close()
      writer.close()
      raise
  ckpt.close()
  writer.close()
  elapsed = time.perf_counter() - (t_compiled or t_start)
  steps_run = step - start_step
  items_per_second = max(steps_run - 1, 0) * items_per_step / max(elapsed, 1e-9)
  final_eval = last_eval if last_eval is not None else evaluate(state)
  plots = write_plots(workdir, list(exp.model.moe_layers)) if cfg.plots and \
      jax.process_index() == 0 else []
  tail = [h["loss"] for h in history[-max(1, len(history) // 10):]]
  return RunSummary(step=step, train_loss=float(np.mean(tail)) if tail else float("nan"),
                    eval=final_eval, baseline_loss=baseline, items_per_second=items_per_second,
                    item_name=item_name, checkpoint_dir=ckpt.directory, plots=plots,
                    stopped=stopped, history=history)
