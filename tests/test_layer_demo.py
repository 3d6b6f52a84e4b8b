"""The README's main job runs end to end, and bad input is one clear line."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _demo(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "experiments/layer_demo.py", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600, env=env)


def test_demo_trains_and_prints_summary():
  out = _demo("--config.steps=30", "--config.log_every=10", "--config.batch_tokens=128",
              "--config.moe.router.capacity_factor=1.5", "--config.moe.dispatch=gather")
  assert out.returncode == 0, out.stderr
  assert "step    30/30" in out.stdout
  assert "final mse" in out.stdout and "tokens per expert" in out.stdout
  diffs = out.stdout.split("max abs diff): ")[1].split(",")
  assert {d.split()[0] for d in diffs} == {"gather", "dropless"}
  assert all(float(d.split()[1]) < 1e-4 for d in diffs), out.stdout


@pytest.mark.parametrize("args,expected", [
    (["--config.moe.router.top_k=20"], "error: config.moe.router.top_k=20 is invalid"),
    (["--config.moe.router.bogus=1"], "unknown config field 'bogus'"),
    (["--config.moe.router.top_k=x"], "--config.moe.router.top_k=x"),
    (["--config=configs/missing.py"], "--config could not be loaded"),
])
def test_bad_input_is_one_line(args, expected):
  out = _demo(*args)
  assert out.returncode != 0
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and expected in lines[0], out.stderr
