"""PNG plots from metrics.jsonl: loss curves and the expert-load heatmap."""

from __future__ import annotations

import os
from typing import List

import numpy as np

from moejax.train.writers import read_metrics


def write_plots(workdir: str, moe_blocks: List[int]) -> List[str]:
  """Writes loss.png (and expert_load.png for MoE models). Returns the paths."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  train = [r for r in rows if r["split"] == "train"]
  evals = [r for r in rows if r["split"] == "eval"]
  paths = []
  if not train:
    return paths
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
  if evals:
    ax.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="eval")
  ax.set_xlabel("step")
  ax.set_ylabel("cross-entropy (nats)")
  ax.set_title("loss")
  ax.grid(alpha=0.3)
  ax.legend()
  paths.append(os.path.join(workdir, "loss.png"))
  fig.tight_layout()
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)

  loaded = [r for r in train if "expert_load" in r]
  if moe_blocks and loaded:
    load = np.asarray([r["expert_load"] for r in loaded])          # [time, blocks, E]
    steps = [r["step"] for r in loaded]
    n = load.shape[1]
    fig, axes = plt.subplots(n, 1, figsize=(7, 1.2 + 1.6 * n), squeeze=False, sharex=True)
    uniform = 1.0 / load.shape[2]
    for i, ax in enumerate(axes[:, 0]):
      image = ax.imshow(load[:, i].T, aspect="auto", origin="lower", cmap="viridis",
                        vmin=0, vmax=max(3 * uniform, load.max()),
                        # one logged row still gets a width of one step
                        extent=(steps[0], max(steps[-1], steps[0] + 1), -0.5,
                                load.shape[2] - 0.5))
      ax.set_ylabel(f"block {moe_blocks[i]}\nexpert")
      fig.colorbar(image, ax=ax, label="share")
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(f"expert load over training (uniform = {uniform:.3f})")
    paths.append(os.path.join(workdir, "expert_load.png"))
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
  return paths
