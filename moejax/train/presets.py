"""Named experiment configs that live in the package, so that notebooks and
pip installs (which do not ship configs/) can use them; configs/*.py wrap
these for the binaries."""

from __future__ import annotations

import ml_collections

from moejax.train.defaults import experiment_config


def lm_tiny() -> ml_collections.ConfigDict:
  """The default experiment: a 4-block byte-level MoE LM (8 experts, top-2,
  dropless) on the embedded stdlib_bytes corpus; ~4 minutes on a 2-core CPU."""
  c = experiment_config()
  c.model.update(kind="lm", num_layers=4, d_model=128, num_heads=4, moe_every=1,
                 dense_d_ff=512, activation="gelu")
  # Active FFN width per token = top_k * d_ff = 512 = the dense baseline's d_ff.
  # Dropless: at this budget a capacity limit drops 10-30% of the early
  # assignments and costs the MoE its lead over dense (the moe_vs_dense study).
  c.model.moe.update(d_ff=256, activation="gelu", dispatch="dropless")
  c.model.moe.router.update(name="top_k", num_experts=8, top_k=2, normalize_top_k=True,
                            capacity_factor=None)
  # stdlib_bytes: ~10.6 MB of training text, so 500 steps (1M bytes) never repeat
  # a byte; 128 eval batches = 262K held-out bytes, evaluated once at the end.
  c.data.update(name="stdlib_bytes", seq_len=128, batch_size=16, eval_batches=128)
  c.train.update(num_steps=500, learning_rate=3e-3, warmup_steps=50, log_every=50,
                 eval_every=0, checkpoint_every=250)
  return c


def vit_tiny() -> ml_collections.ConfigDict:
  """A small V-MoE on the embedded 8x8 digits, MoE in every second block (8
  experts, top-2, batch-prioritised routing); under a minute on a 2-core CPU."""
  c = experiment_config()
  c.model.update(kind="vit", num_layers=4, d_model=64, num_heads=4, moe_every=2,
                 dense_d_ff=256, activation="gelu")
  c.model.vit.update(image_size=8, patch_size=2, num_channels=1, num_classes=10, pool="mean")
  c.model.moe.update(d_ff=128, activation="gelu", dispatch="gather")
  c.model.moe.router.update(name="top_k", num_experts=8, top_k=2, capacity_factor=1.25,
                            drop_policy="probability")
  # 400 steps are 17 passes over the 1,500 training images: without the
  # 1-pixel shifts every model memorises them.
  c.data.update(name="sklearn_digits", eval_split="test", batch_size=64, eval_batches=0,
                augment_shift=1)
  c.train.update(num_steps=400, learning_rate=2e-3, warmup_steps=40, weight_decay=0.05,
                 log_every=50, eval_every=200, checkpoint_every=200)
  return c
