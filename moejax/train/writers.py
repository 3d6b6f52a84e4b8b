"""Metric sinks: a JSONL file (the source of the plots) and TensorBoard scalars.

<workdir>/metrics.jsonl holds one JSON object per logged step and split:
  {"step": 100, "split": "train", "loss": 2.1, ..., "expert_load": [[...], ...]}
<workdir>/tensorboard/ holds the scalar ones as TensorBoard events.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from moejax.train.guarantees import atomic_write_text


class MetricsWriter:
  """Writes rows; on resume, drops rows logged after the restored step (they
  belonged to the lost part of an interrupted run and will be logged again),
  and a torn last row (a crash or full disk mid-append), with a notice. The
  kept rows are rewritten atomically."""

  def __init__(self, workdir: str, resume_step: int, enabled: bool = True,
               log: Callable[[str], None] = print):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled
    self._tb = None
    self._rows = [r for r in read_metrics(self.path, log if enabled else None)
                  if r["step"] <= resume_step]
    if not enabled:
      return
    atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self._rows))
    self._tb = _summary_writer_class()(os.path.join(workdir, "tensorboard"),
                                       purge_step=resume_step + 1)

  def train_history(self) -> List[Dict[str, float]]:
    """[{'step', 'loss'}] of the train rows kept from earlier processes."""
    return [{"step": r["step"], "loss": r["loss"]} for r in self._rows if r["split"] == "train"]

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


def read_metrics(path: str, log: Optional[Callable[[str], None]] = None
                 ) -> List[Dict[str, Any]]:
  """The rows of a metrics.jsonl file ([] if it does not exist). A torn last
  line is dropped (reported through `log`); a bad line elsewhere is an error."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [line for line in f.read().split("\n") if line.strip()]
  rows = []
  for i, line in enumerate(lines):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      if i != len(lines) - 1:
        raise ValueError(f"{path} line {i + 1} is not JSON; the file is damaged") from None
      if log is not None:
        log(f"{path}: dropped a torn last row (an interrupted write): {line[:60]!r}")
  return rows


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch.

  tensorboardX imports torch whenever it is installed, only to accept torch
  tensors; that costs every training process about 1.5 s of CPU, and moejax
  writes Python floats. torch is hidden while tensorboardX is first imported
  (unless something already imported it) and visible again right after."""
  if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
    sys.modules["torch"] = None   # `import torch` raises ImportError
    try:
      import tensorboardX
    finally:
      del sys.modules["torch"]
  import tensorboardX
  return tensorboardX.SummaryWriter
