"""Train-step throughput and model FLOPs utilisation (MFU): the last section
of experiments/accelerator_report.py (benchmark.py --train_config).

One full optimizer step of an experiment config (forward, backward, AdamW),
built as experiments/train.py builds it (params placed by the sharding
rules on all devices, the batch split over the batch axes), timed on random
token (or image) batches so that no dataset is needed.

Model FLOPs per step follow PaLM's appendix B: 6 x (active parameters,
without the input embedding's lookup) per token, plus 12 x layers x d_model
x seq_len per token for attention scores and values; x tokens per step.
MFU = model FLOPs per second / (peak FLOP/s per device x devices). The
peaks are the vendors' dense bf16 figures (PEAK_TFLOPS); for another device
pass --peak_tflops.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from moejax.models import build_model
from moejax.parallel import batch_sharding, make_mesh, tree_shardings
from moejax.models.params import active_params
from moejax.train.optim import make_optimizer
from moejax.train.step import init_state, make_train_step
from timing import round_robin_ms

# Dense bf16 TFLOP/s per device (vendor datasheets), matched as substrings of
# jax's device_kind, first match wins.
PEAK_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L4", 121.0),
               ("TPU v6", 918.0), ("TPU v5p", 459.0), ("TPU v5 lite", 197.0),
               ("TPU v5e", 197.0), ("TPU v4", 275.0))


def peak_tflops(device_kind: str):
  """The device's dense bf16 peak, or None when it is not in PEAK_TFLOPS."""
  for name, tflops in PEAK_TFLOPS:
    if name in device_kind:
      return tflops
  return None


def model_flops_per_step(exp, params) -> float:
  """PaLM-style model FLOPs of one training step (module docstring)."""
  m, data = exp.model, exp.data
  active = active_params(exp.model, params)
  if m.kind == "lm":
    active -= m.lm.vocab_size * m.d_model  # the input embedding is a lookup
    tokens_per_example = data.seq_len
  else:
    tokens_per_example = m.num_patches + (m.vit.pool == "cls")
  per_token = 6 * active + 12 * m.num_layers * m.d_model * tokens_per_example
  return float(per_token * data.batch_size * tokens_per_example)


def _random_batch(exp, rng: np.random.Generator) -> dict:
  m, batch = exp.model, exp.data.batch_size
  if m.kind == "lm":
    tokens = rng.integers(0, m.lm.vocab_size, (batch, exp.data.seq_len + 1), dtype=np.int32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
            "mask": np.ones((batch, exp.data.seq_len), np.float32)}
  v = m.vit
  return {"inputs": rng.standard_normal((batch, v.image_size, v.image_size, v.num_channels),
                                        dtype=np.float32),
          "targets": rng.integers(0, v.num_classes, (batch,), dtype=np.int32),
          "mask": np.ones((batch,), np.float32)}


def train_step_rows(name: str, exp, repeats: int, warmup: int, peak: float | None,
                    common: dict):
  """One row: step time, tokens (or examples) per second, model TFLOP/s and
  MFU of exp's train step on all devices. Prints it."""
  mesh = make_mesh(exp.mesh)
  model = build_model(exp.model)
  optimizer = make_optimizer(exp.train)
  batch = _random_batch(exp, np.random.default_rng(0))
  with jax.set_mesh(mesh):
    init_fn = lambda: init_state(model, optimizer, jax.random.key(exp.seed),
                                 jnp.asarray(batch["inputs"]))
    state_sharding = tree_shardings(jax.eval_shape(init_fn), mesh)
    state = jax.jit(init_fn, out_shardings=state_sharding)()
    batch = jax.device_put(batch, batch_sharding(mesh))
    step = jax.jit(make_train_step(model, optimizer, exp.train, exp.seed),
                   in_shardings=(state_sharding, batch_sharding(mesh)))

  def run(state, batch):
    with jax.set_mesh(mesh):
      return step(state, batch)

  ms = round_robin_ms({"step": (run, (state, batch))}, repeats, warmup)["step"]
  flops = model_flops_per_step(exp, state["params"])
  devices = mesh.size
  items = exp.data.batch_size * (exp.data.seq_len if exp.model.kind == "lm" else 1)
  tflops = flops / ms / 1e9
  peak = peak if peak is not None else peak_tflops(common["device_kind"])
  row = dict(name=name, step_ms=ms, devices=devices, batch_size=exp.data.batch_size,
             items_per_second=items / ms * 1e3, model_tflops_per_step=flops / 1e12,
             model_tflops_per_second=tflops, peak_tflops_per_device=peak,
             mfu=None if peak is None else tflops / (peak * devices), **common)
  mfu = "-" if row["mfu"] is None else f"{row['mfu']:.1%}"
  header = (f"{'train step':28s} {'devices':>7s} {'step ms':>9s} {'items/s':>10s} "
            f"{'model TFLOP/s':>14s} {'MFU':>6s}")
  print(header)
  print("-" * len(header))
  print(f"{name:28s} {devices:7d} {ms:9.1f} {row['items_per_second']:10.0f} {tflops:14.3f} "
        f"{mfu:>6s}")
  return [row]
