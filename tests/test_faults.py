"""Faults that must never give a wrong answer with exit 0. Each is either made
right or refused in one line; the README's fault matrix points here."""

import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.models import build_model
from moejax.train import CheckpointError, Checkpointer, experiment_from_config, train_and_evaluate
from moejax.train.guarantees import WorkdirError, WorkdirLock, tree_checksums
from moejax.train.optim import make_optimizer
from moejax.train.step import init_state
from tiny_configs import ROOT, TINY_FLAGS, tiny_config, train_binary


def _run(workdir, data_dir, log=None, **overrides):
  exp = experiment_from_config(tiny_config(data_dir=data_dir, train__log_every=1, **overrides))
  return train_and_evaluate(exp, str(workdir), log=log or (lambda line: None))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
  """(workdir, summary) of a 6-step run with checkpoints at steps 3 and 6."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  return workdir, _run(workdir, data_dir)


@pytest.fixture
def damaged(trained, tmp_path):
  """A copy of the trained workdir, to damage."""
  workdir = tmp_path / "run"
  shutil.copytree(trained[0], workdir)
  return workdir


def _largest_file(folder: pathlib.Path) -> pathlib.Path:
  return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_bytes(path: pathlib.Path) -> None:
  with open(path, "r+b") as f:
    f.seek(path.stat().st_size // 2)
    f.write(b"\x7f\x7f\x7f\x7f")


DAMAGES = {
    "bytes_overwritten": lambda step: _flip_bytes(_largest_file(step / "state")),
    "file_truncated": lambda step: os.truncate(_largest_file(step / "state"),
                                               _largest_file(step / "state").stat().st_size // 3),
    "state_deleted": lambda step: shutil.rmtree(step / "state"),
    "metadata_garbage": lambda step: (step / "state" / "_METADATA").write_bytes(b"\x00garbage"),
    "config_garbage": lambda step: (step / "config" / "metadata").write_text("{not json"),
    "data_state_altered": lambda step: (step / "data" / "metadata").write_text(
        json.dumps({"next_index": 1})),
}


def _target_state(data_dir):
  exp = experiment_from_config(tiny_config(data_dir=data_dir))
  init = functools.partial(init_state, build_model(exp.model), make_optimizer(exp.train))
  return exp, jax.jit(init)(jax.random.key(5), np.zeros((2, 8), np.int32))


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_latest_checkpoint_is_set_aside_and_the_previous_one_restored(
    damaged, data_dir, damage):
  DAMAGES[damage](damaged / "checkpoints" / "6")
  exp, target = _target_state(data_dir)
  lines = []
  ckpt = Checkpointer(str(damaged), keep=2)
  step, state, _ = ckpt.restore_latest(target, exp.raw, lines.append)
  ckpt.close()
  assert step == 3 and int(state["step"]) == 3
  assert len(lines) == 1 and "\n" not in lines[0], lines
  assert lines[0].startswith("checkpoint step 6 is unusable: ") and "6.corrupt" in lines[0]
  assert sorted(os.listdir(damaged / "checkpoints")) == ["3", "6.corrupt"]  # kept, not deleted


def test_overwritten_bytes_are_caught_by_the_checksum_and_the_run_resumes_exactly(
    trained, damaged, data_dir):
  """The reported silent failure: 4 bytes overwritten in checkpoints/6/state
  used to restore with exit 0. Now step 6 is refused and the run, resumed from
  step 3, reproduces the original losses bit for bit."""
  _flip_bytes(_largest_file(damaged / "checkpoints" / "6" / "state"))
  lines = []
  summary = _run(damaged, data_dir, log=lines.append)
  assert any("checkpoint step 6 is unusable: array " in l and "checksum" in l for l in lines)
  assert "resumed from" in " ".join(lines) and "at step 3" in " ".join(lines)
  original = trained[1]
  assert [h["loss"] for h in summary.history] == [h["loss"] for h in original.history]
  assert summary.eval == original.eval and summary.train_loss == original.train_loss


def test_no_verifying_checkpoint_is_one_line(damaged, data_dir):
  for step in ("3", "6"):
    DAMAGES["bytes_overwritten"](damaged / "checkpoints" / step)
  exp, target = _target_state(data_dir)
  ckpt = Checkpointer(str(damaged), keep=2)
  with pytest.raises(CheckpointError, match=r"^no checkpoint in .* verifies \(steps 6, 3 were "
                                            r"damaged and moved aside"):
    ckpt.restore_latest(target, exp.raw, lambda line: None)
  ckpt.close()


def test_checksum_sees_a_single_changed_word():
  x = {"a": np.arange(1000, dtype=np.float32), "b": np.ones((3, 4), np.int8),
       "c": np.zeros(5, np.dtype("bfloat16"))}
  base = tree_checksums(x)
  for name, index in (("a", 999), ("b", (2, 3)), ("c", 0)):
    changed = {k: v.copy() for k, v in x.items()}
    changed[name][index] += 1
    after = tree_checksums(changed)
    assert after[name] != base[name] and all(after[k] == base[k] for k in x if k != name)
  assert tree_checksums({"a": x["a"][::-1].copy()})["a"] != base["a"]  # order matters


def test_checksums_on_host_equal_the_device_program():
  """Arrays in this process's memory are summed with numpy, others by the
  jitted device program: both give the same words for every dtype a state holds."""
  from moejax.train.guarantees import _host_checksum, _tree_sums
  with jax.enable_x64(True):
    leaves = [np.arange(1000, dtype=np.float32) * 1.7, np.full((3, 4), -3, np.int8),
              np.linspace(-2, 2, 7).astype(np.dtype("bfloat16")), np.array([True, False, True]),
              np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2],   # not contiguous
              np.float32(2.5), np.zeros((0, 3), np.float32), np.arange(5, dtype=np.uint8),
              np.linspace(-1, 1, 9), np.arange(-4, 4, dtype=np.int64) * 2 ** 40,
              jax.random.key(3), jax.random.split(jax.random.key(4), 3)]
    device = jax.device_get(_tree_sums([jnp.asarray(leaf) for leaf in leaves]))
    for leaf, want in zip(leaves, device):
      np.testing.assert_array_equal(_host_checksum(leaf), want, err_msg=str(leaf.dtype))
      np.testing.assert_array_equal(_host_checksum(jnp.asarray(leaf)), want)


def test_second_run_on_a_workdir_is_refused_with_the_holder(tmp_path, data_dir):
  workdir = tmp_path / "run"
  workdir.mkdir()
  with WorkdirLock(str(workdir)):
    with pytest.raises(WorkdirError, match=rf"is in use by pid {os.getpid()} on host "):
      _run(workdir, data_dir)
    proc = train_binary(f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
                        *TINY_FLAGS)
    _, err = proc.communicate(timeout=300)
  assert proc.returncode == 1 and len(err.strip().splitlines()) == 1, err
  assert f"is in use by pid {os.getpid()}" in err
  assert sorted(os.listdir(workdir)) == [".lock"]  # the refused runs wrote nothing


def test_lock_of_a_killed_process_is_released(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", (
      "import sys, time; from moejax.train.guarantees import WorkdirLock; "
      f"WorkdirLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(600)")],
      cwd=ROOT, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "locked"
  with pytest.raises(WorkdirError, match=f"in use by pid {holder.pid} on host"):
    WorkdirLock(str(tmp_path)).acquire()
  holder.kill()  # SIGKILL: no cleanup code runs
  holder.wait()
  WorkdirLock(str(tmp_path)).acquire().release()


@pytest.mark.parametrize("where", ["is_a_file", "under_a_file"])
def test_unusable_workdir_is_one_line(tmp_path, data_dir, where):
  (tmp_path / "file").write_text("x")
  workdir = tmp_path / "file" if where == "is_a_file" else tmp_path / "file" / "run"
  with pytest.raises(WorkdirError) as err:
    _run(workdir, data_dir)
  assert "\n" not in str(err.value) and f"--workdir={workdir}" in str(err.value)


def test_torn_last_metrics_row_is_dropped_on_resume(damaged, data_dir):
  metrics = damaged / "metrics.jsonl"
  rows = metrics.read_text().splitlines()
  metrics.write_text("\n".join(rows) + '\n{"step": 7, "split": "tr')
  lines = []
  _run(damaged, data_dir, log=lines.append)
  assert any("dropped a torn last row" in l for l in lines)
  assert metrics.read_text().splitlines() == rows  # the file is whole again
  assert not [p for p in os.listdir(damaged) if p.startswith(".metrics")]


# Runs train.py with writes past 64 KB failing with EFBIG, as on a full disk
# (a launcher, not preexec_fn: forking a process that runs JAX can deadlock).
_WITHOUT_LARGE_FILES = (
    "import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (64000, 64000)); sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')")


def test_failed_async_checkpoint_is_one_line_and_keeps_the_previous_one(damaged, data_dir):
  shutil.rmtree(damaged / "checkpoints" / "6")
  proc = subprocess.Popen(
      [sys.executable, "-c", _WITHOUT_LARGE_FILES, "experiments/train.py",
       "--config=tests/tiny_experiment.py", f"--workdir={damaged}",
       f"--config.data.data_dir={data_dir}", "--config.train.num_steps=9"],
      cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  _, err = proc.communicate(timeout=300)
  lines = err.strip().splitlines()
  assert proc.returncode == 1 and len(lines) == 1, err
  assert lines[0].startswith("error: checkpoint for step 6 could not be written: [Errno 27] ")
  assert sorted(os.listdir(damaged / "checkpoints")) == ["3"]  # no tmp folder, step 3 kept


@pytest.mark.parametrize("text", [
    'OUT_OF_RANGE: Error writing "a/0.0" in OCDBT database at local file "/w/ocdbt.process_0/": '
    'Failed writing: "/w/ocdbt.process_0/d/9e92": Failed to write 79375 bytes to file 7: '
    "File too large [os_error_code='27']",
    'OUT_OF_RANGE: Error opening "zarr" driver: Error writing "params.k/.zarray" in OCDBT '
    'database at local file "/w/ocdbt.process_0/": Error writing local file "/w/ocdbt.process_0/d/9e92": '
    "[os_error_code=27] File too large [source locations='x.cc:1']",
])
def test_tensorstore_write_failures_read_as_the_os_error(text):
  """tensorstore words a failed write differently depending on which write hit
  it; each wording reduces to the errno and the file."""
  from moejax.train.checkpoint import _write_failure
  try:
    try:
      raise ValueError(text)
    except ValueError as inner:
      raise RuntimeError("Encountered error while writing") from inner
  except RuntimeError as err:
    assert _write_failure(err) == "[Errno 27] File too large: /w/ocdbt.process_0/d/9e92"


def _read_losses(workdir):
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def test_kill_9_at_any_moment_then_rerun_gives_identical_losses(tmp_path, data_dir):
  """kill -9 during compilation, mid-training and while a checkpoint folder is
  being written; each rerun resumes, and the losses equal an uninterrupted run's."""
  flags = [f"--config.data.data_dir={data_dir}", *TINY_FLAGS, "--config.train.num_steps=12",
           "--config.train.log_every=1", "--config.train.checkpoint_every=2",
           "--config.train.plots=False"]
  reference = train_binary(f"--workdir={tmp_path / 'reference'}", *flags)
  assert reference.wait(timeout=300) == 0
  workdir = tmp_path / "killed"
  checkpoints = workdir / "checkpoints"

  def compiling(line):
    return line.startswith("model:")

  def training(line):
    return line.startswith("step") and int(line.split()[1].split("/")[0]) >= 3

  def writing_checkpoint(line):
    deadline = time.time() + 60
    while time.time() < deadline:
      if checkpoints.is_dir() and any("tmp" in p for p in os.listdir(checkpoints)):
        return True
    return False

  for moment in (compiling, training, writing_checkpoint):
    proc = train_binary(f"--workdir={workdir}", *flags)
    for line in proc.stdout:
      if moment(line):
        break
    proc.kill()
    proc.wait()
  final = train_binary(f"--workdir={workdir}", *flags)
  out, err = final.communicate(timeout=300)
  assert final.returncode == 0 and "finished 12 steps" in out, err
  assert _read_losses(workdir) == _read_losses(tmp_path / "reference")
  assert len(_read_losses(workdir)) == 12


def _binary_error(binary, *args):
  """(exit code, stderr lines) of experiments/<binary>.py *args."""
  proc = subprocess.run([sys.executable, f"experiments/{binary}.py", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  return proc.returncode, proc.stderr.strip().splitlines()


@pytest.mark.parametrize("binary,args,code,expected", [
    ("generate", ["--model=x", "--prompt=a", "--temperature=nan"], 2,
     "--temperature=nan is invalid: must be a finite number"),
    ("benchmark", ["--tokens=0"], 2, "--tokens=0"),
    ("benchmark", ["--repeats=0"], 2, "--repeats=0"),
    ("train", ["--workdir=/nonexistent/never", "--config.train.learning_rate=inf"], 2,
     "--config.train.learning_rate=inf is invalid: must be a finite number"),
    ("train", ["--workdir=/nonexistent/never", "--config=tests/not_a_config.py"], 2,
     "--config: get_config() returned a list"),
])
def test_bad_flags_are_one_line(binary, args, code, expected):
  returncode, lines = _binary_error(binary, *args)
  assert returncode == code and len(lines) == 1 and expected in lines[0], lines
  assert not os.path.exists("/nonexistent/never")


@pytest.mark.parametrize("binary, flag", [("train", "--config"), ("peer_benchmark", "--experts")])
def test_helpfull_lists_the_flags(binary, flag):
  proc = subprocess.run([sys.executable, f"experiments/{binary}.py", "--helpfull"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert f"  {flag}:" in proc.stdout and "Unknown command line flag" not in proc.stderr, (
      proc.stdout[-500:], proc.stderr)


@pytest.mark.parametrize("args,code,expected", [
    (["--prompt=def ", "--max_new_tokens=1000000000"], 1, "GiB, more than the"),
    (["--prompt=def ", "--max_new_tokens=1000000000000"], 1, "positions are int32"),
    (["--prompt_ids=99999999999"], 2, "--prompt_ids holds 99999999999: token ids must be in "
                                      "[0, 256)"),
])
def test_generate_refuses_what_it_cannot_do(trained, args, code, expected):
  returncode, lines = _binary_error("generate", f"--model={trained[0]}", *args)
  assert returncode == code and len(lines) == 1 and expected in lines[0], lines


_RAISES = ("import sys; from moejax.cli import run\n"
           "def main(argv):\n  raise KeyError('boom')\n"
           "run(main)")


@pytest.mark.parametrize("verbosity,lines_expected", [(None, 1), ("--verbosity=1", None)])
def test_unexpected_errors_are_one_line_unless_verbose(verbosity, lines_expected):
  """run()'s top-level handler: any exception a binary lets through."""
  proc = subprocess.run([sys.executable, "-c", _RAISES] + ([verbosity] if verbosity else []),
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1, proc.stderr
  if lines_expected:
    assert lines == ["error: KeyError: 'boom' (rerun with --verbosity=1 for the traceback)"]
  else:
    assert "Traceback" in proc.stderr and len(lines) > 3


def test_resume_on_a_corpus_with_another_digest_is_refused(tmp_path, data_dir):
  """stdlib_bytes differs between Python versions: a checkpoint trained on one
  copy does not silently continue on another."""
  workdir = tmp_path / "run"
  _run(workdir, data_dir, data__name="stdlib_bytes", train__num_steps=3)
  other = tmp_path / "other_tfds"
  shutil.copytree(pathlib.Path(data_dir) / "stdlib_bytes", other / "stdlib_bytes")
  metadata = next(other.rglob("metadata.json"))
  metadata.write_text(json.dumps({**json.loads(metadata.read_text()), "content_sha256": "0" * 64}))
  with pytest.raises(CheckpointError, match=r"trained on stdlib_bytes with content sha256 "
                                            r"[0-9a-f]{64}, but the copy in data.data_dir has "
                                            r"0{64}"):
    _run(workdir, str(other), data__name="stdlib_bytes", train__num_steps=6)
