"""Training loop: checkpoints restore exactly, an interrupted run resumes to
the same losses as an uninterrupted one, and every failure is one clear line
that leaves no bad checkpoint behind."""

import functools
import os
import signal

import jax
import numpy as np
import pytest

from moejax.train import (CheckpointError, Checkpointer, TrainingError, experiment_from_config,
                          train_and_evaluate)
from tiny_configs import TINY_FLAGS, tiny_config, train_binary as _binary



def _run(workdir, data_dir, **overrides):
  exp = experiment_from_config(tiny_config(data_dir=data_dir, **overrides))
  return train_and_evaluate(exp, str(workdir), log=lambda line: None)


def _trees_equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, leaves_b))


def test_checkpoint_restores_params_optimizer_and_data_state(tmp_path, data_dir):
  from moejax.models import build_model
  from moejax.train.optim import make_optimizer
  from moejax.train.step import init_state
  exp = experiment_from_config(tiny_config(data_dir=data_dir,
                                           model__moe__router__use_expert_bias=True))
  optimizer = make_optimizer(exp.train)
  init = jax.jit(functools.partial(init_state, build_model(exp.model), optimizer))
  state = init(jax.random.key(0), np.zeros((2, 8), np.int32))
  state["opt_state"] = jax.jit(lambda tree: jax.tree.map(
      lambda x: x + 0.5 if x.dtype == np.float32 else x, tree))(state["opt_state"])
  ckpt = Checkpointer(str(tmp_path), keep=2)
  ckpt.save(7, state, {"next_index": 7}, exp.raw)
  ckpt.wait()
  fresh = init(jax.random.key(1), np.zeros((2, 8), np.int32))
  step, restored, data_state = ckpt.restore_latest(fresh, exp.raw, log=print)
  assert step == 7
  ckpt.close()
  assert data_state == {"next_index": 7}
  assert _trees_equal(restored, state)
  assert not _trees_equal(fresh["params"], state["params"])


def test_interrupted_run_resumes_to_identical_losses(tmp_path, data_dir):
  common = dict(train__num_steps=6, train__log_every=1, train__checkpoint_every=100,
                model__moe__router__use_expert_bias=True, model__moe__router__jitter_noise=0.1)
  full = _run(tmp_path / "full", data_dir, **common)
  first = _run(tmp_path / "split", data_dir, train__stop_at_step=3, **common)
  assert first.stopped == "train.stop_at_step=3" and first.step == 3
  second = _run(tmp_path / "split", data_dir, **common)
  assert second.stopped is None and second.step == 6
  losses = lambda s: [h["loss"] for h in s.history]
  assert losses(first) == losses(full)[:3]
  # the resumed run reports the whole run (its history includes the first part)
  assert losses(second) == losses(full)     # bitwise equal, step for step
  assert second.train_loss == full.train_loss
  assert second.eval == full.eval
  rows = [l for l in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
          if '"train"' in l]
  assert len(rows) == 6


def test_incompatible_checkpoint_names_the_fields(tmp_path, data_dir):
  _run(tmp_path, data_dir, train__num_steps=2)
  with pytest.raises(CheckpointError) as err:
    _run(tmp_path, data_dir, train__num_steps=4, model__d_model=64, data__seq_len=16)
  message = str(err.value)
  assert "incompatible config" in message and "\n" not in message
  assert "model.d_model: checkpoint 32 vs config 64" in message
  assert "data.seq_len: checkpoint 32 vs config 16" in message
  # Changing only the run length or learning rate resumes fine.
  summary = _run(tmp_path, data_dir, train__num_steps=4, train__learning_rate=1e-3)
  assert summary.step == 4


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
  with pytest.raises(TrainingError) as err:
    _run(tmp_path, data_dir, train__learning_rate=1e30, train__grad_clip_norm=0.0,
         train__warmup_steps=0, train__log_every=1, train__checkpoint_every=1,
         train__num_steps=20)
  message = str(err.value)
  assert "\n" not in message and "at step" in message, message
  failed_step = int(message.split("at step ")[1].split(";")[0].split()[0])
  ckpt = Checkpointer(str(tmp_path), keep=2)
  latest = ckpt.latest_step()
  assert latest is None or latest < failed_step
  if latest is not None:
    saved = ckpt._manager.restore(latest)["state"]
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(saved["params"]))
  ckpt.close()
  assert not [p for p in os.listdir(tmp_path / "checkpoints") if "tmp" in p]


def test_binary_trains_and_prints_summary_with_plots_and_a_profile(tmp_path, data_dir):
  workdir = tmp_path / "run"
  args = (f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *TINY_FLAGS,
          "--config.train.num_steps=20", "--config.train.log_every=10",
          "--config.train.eval_every=10", "--config.train.profile_steps=(3, 4)")
  proc = _binary(*args)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err
  assert "step    20/20" in out and "finished 20 steps" in out
  assert "unigram baseline" in out and "tokens/s" in out
  for name in ("loss.png", "expert_load.png", "metrics.jsonl", "config.json"):
    assert (workdir / name).exists(), name
  assert os.listdir(workdir / "tensorboard")
  assert os.listdir(workdir / "checkpoints") == ["20"]
  assert "profile of steps 3..4 written to" in out
  assert list((workdir / "profile").rglob("*.xplane.pb")), "no profiler trace written"
  # Run again: nothing is left to train, and no throughput is made up for it.
  again = _binary(*args)
  out, err = again.communicate(timeout=600)
  assert again.returncode == 0, err
  assert "finished 20 steps" in out and "throughput not measured" in out and "0.0k" not in out


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, data_dir):
  workdir = tmp_path / "run"
  proc = _binary(f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *TINY_FLAGS,
                 "--config.train.num_steps=1000000", "--config.train.log_every=5",
                 "--config.train.checkpoint_every=1000000", "--config.train.plots=False")
  for line in proc.stdout:
    if line.startswith("step"):
      break
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err
  assert "stopped by SIGTERM at step" in out, out
  step = int(out.split("stopped by SIGTERM at step ")[1].split()[0])
  assert os.listdir(workdir / "checkpoints") == [str(step)]


def test_a_first_ctrl_c_stops_at_the_next_step_and_a_second_aborts():
  """Ctrl-C is handled as SIGTERM is (the run stops after its step with a
  checkpoint, above); the first puts the previous handler back, so a second
  Ctrl-C raises KeyboardInterrupt at once."""
  import time
  from moejax.train.loop import StopFlag
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with StopFlag() as stop:
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.01)
      assert stop.reason == "SIGINT"
      with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  finally:
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("args,code,expected", [
    (["--config.model.bogus=1"], 2, "unknown config field 'bogus'"),
    (["--config.model.moe.router.top_k=99"], 2, "config.model.moe.router.top_k=99 is invalid"),
    (["--config.data.name=mnist"], 1, "data.name='mnist' is not prepared in data_dir="),
    # None overrides reach validation (ml_collections alone cannot parse them).
    (["--config.model.d_model=None"], 2, "model.d_model=None is invalid"),
    # The mesh is checked against the devices before anything is compiled.
    (["--config.mesh.expert=2"], 2, "config.mesh.data=-1 is invalid: cannot fill"),
    (["--num_processes=2"], 2, "give all three"),
    (["--config.train.profile_steps=(5, 2)"], 2, "train.profile_steps=(5, 2) is invalid"),
])
def test_binary_bad_input_is_one_line_and_writes_nothing(tmp_path, data_dir, args, code,
                                                         expected):
  workdir = tmp_path / "never"
  proc = _binary(f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *args)
  out, err = proc.communicate(timeout=300)
  lines = err.strip().splitlines()
  assert proc.returncode == code and len(lines) == 1 and expected in lines[0], err
  assert not workdir.exists()
