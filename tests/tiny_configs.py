"""Very small experiment configs for the model / data / training tests, and
the train binary run on one."""

import os
import pathlib
import subprocess
import sys

from moejax.train.defaults import experiment_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Flags that shrink configs/lm_tiny.py for experiments/train.py runs.
TINY_FLAGS = ["--config.model.num_layers=1", "--config.model.d_model=32",
              "--config.model.num_heads=2", "--config.model.moe.d_ff=32",
              "--config.data.seq_len=32", "--config.data.batch_size=8",
              "--config.data.eval_batches=1"]


def train_binary(*args, **kwargs) -> subprocess.Popen:
  """experiments/train.py *args, on CPU, with text stdout/stderr pipes."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.Popen([sys.executable, "experiments/train.py", *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def tiny_config(kind: str = "lm", data_dir: str = None, **overrides):
  """A seconds-to-compile experiment. overrides: 'section.field' -> value,
  with '__' for dots (model__moe__router__name='expert_choice')."""
  c = experiment_config()
  c.model.update(kind=kind, num_layers=2, d_model=32, num_heads=2, dense_d_ff=64, moe_every=1)
  c.model.moe.update(d_ff=32, dispatch="dropless")
  c.model.moe.router.update(num_experts=4, top_k=2)
  if kind == "lm":
    c.data.update(name="pydoc_bytes", seq_len=32, batch_size=8, eval_batches=2)
  else:
    c.model.update(moe_every=2)
    c.model.vit.update(image_size=8, patch_size=4, num_channels=1, num_classes=10)
    c.data.update(name="sklearn_digits", eval_split="test", batch_size=16, eval_batches=2)
  c.data.data_dir = data_dir
  c.train.update(num_steps=6, learning_rate=3e-3, warmup_steps=2, log_every=2, eval_every=0,
                 checkpoint_every=3, plots=False)
  for key, value in overrides.items():
    node, *path = key.split("__")
    target = c[node]
    for part in path[:-1]:
      target = target[part]
    if path:
      target[path[-1]] = value
    else:
      c[node] = value
  return c
