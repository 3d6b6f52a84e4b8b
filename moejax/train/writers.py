"""Metric sinks: a JSONL file (the source of the plots) and TensorBoard scalars.

<workdir>/metrics.jsonl holds one JSON object per logged step and split:
  {"step": 100, "split": "train", "loss": 2.1, ..., "expert_load": [[...], ...]}
<workdir>/tensorboard/ holds the scalar ones as TensorBoard events.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

import numpy as np


class MetricsWriter:
  """Writes rows; on resume, drops rows logged after the restored step (they
  belonged to the lost part of an interrupted run and will be logged again)."""

  def __init__(self, workdir: str, resume_step: int, enabled: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    rows = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
    with open(self.path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1)
    except ImportError:  # TensorBoard output is optional
      self._tb = None

  def write(self, step: int, split: str, values: Dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "split": split}
    for key, value in values.items():
      value = np.asarray(value)
      row[key] = value.item() if value.ndim == 0 else value.tolist()
      if self._tb is not None and value.ndim == 0:
        self._tb.add_scalar(f"{split}/{key}", value.item(), step)
      elif self._tb is not None and value.ndim == 1:
        for i, v in enumerate(value):
          self._tb.add_scalar(f"{split}/{key}/moe_block_{i}", float(v), step)
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(path: str) -> List[Dict[str, Any]]:
  """The rows of a metrics.jsonl file ([] if it does not exist)."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
