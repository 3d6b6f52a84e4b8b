"""Named experiment configs that live in the package, so that notebooks and
pip installs (which do not ship configs/) can use them; configs/*.py wrap
these for the binaries."""

from __future__ import annotations

import ml_collections

from moejax.train.defaults import experiment_config


def lm_tiny() -> ml_collections.ConfigDict:
  """The default experiment: a 4-block byte-level MoE LM (8 experts, top-2,
  capacity factor 1.25) on the embedded pydoc_bytes corpus; ~2.5 minutes on a
  2-core CPU."""
  c = experiment_config()
  c.model.update(kind="lm", num_layers=4, d_model=128, num_heads=4, moe_every=1,
                 dense_d_ff=512, activation="gelu")
  # Active FFN width per token = top_k * d_ff = 512 = the dense baseline's d_ff.
  # Capacity-bucketed gather dispatch: the configuration the README's MoE-vs-
  # dense table was measured with (dropless runs at the same speed on CPU).
  c.model.moe.update(d_ff=256, activation="gelu", dispatch="gather")
  c.model.moe.router.update(name="top_k", num_experts=8, top_k=2, normalize_top_k=True,
                            capacity_factor=1.25)
  c.data.update(name="pydoc_bytes", seq_len=128, batch_size=16, eval_batches=16)
  c.train.update(num_steps=500, learning_rate=3e-3, warmup_steps=50, log_every=50,
                 eval_every=250, checkpoint_every=250)
  return c
