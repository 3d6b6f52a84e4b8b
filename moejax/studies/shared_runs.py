"""Runs that one study already trained and another asks for again.

Studies share rows: the top-2 8x256 MoE of lm_study is `coarse_8x256_top2` in
granularity, `top2` in remoe, `top2_8x256` in peer and `dense_4_heads` in
switchhead, and each study trained it again (19 of 144 committed runs were
such repeats; their losses are bit-identical, training being deterministic).
Here every finished run in the studies beside a study's workdir
(<root>/<study>/**/study_row.json) is indexed by the digest of the
experiment config it was trained from, so a job whose config is the same
takes that run's row instead of training.

The digest covers the whole resolved config (model, data split, steps,
learning rate, balance weight, seed...), not the names of rows or folders;
only data.data_dir is left out, a path on this machine whose content is
checked by its digest when a run starts. Runs that start from another run's
weights (train.init_from) are never shared: their config names a folder.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

from moejax.studies.comparison import apply_override

ROW_FILE = "study_row.json"


def config_digest(config) -> Optional[str]:
  """sha256 of the resolved experiment config; None for a run that starts
  from another run's weights."""
  if config.train.get("init_from"):
    return None
  as_dict = config.to_dict()
  as_dict["data"] = {**as_dict["data"], "data_dir": None}
  return hashlib.sha256(json.dumps(as_dict, sort_keys=True, default=str).encode()).hexdigest()


def config_of(base: Callable, assignments: Sequence[str]):
  """base() with the assignments applied (a train.init_from source not loaded)."""
  config = base()
  for assignment in assignments:
    apply_override(config, assignment)
  return config


class SharedRuns:
  """Finished rows under root/<study>/, by config digest (indexed on first use)."""

  def __init__(self, root: str):
    self.root = root
    self._index: Optional[Dict[str, str]] = None

  def _build(self) -> Dict[str, str]:
    from moejax.studies.catalogue import STUDIES
    index = {}
    paths = [(study, path) for study in sorted(STUDIES) for path in sorted(glob.glob(
        os.path.join(self.root, study, "**", ROW_FILE), recursive=True))]
    for study, path in paths:
      try:
        with open(path) as f:
          saved = json.load(f)
        if saved["row"].get("eval_loss") is None:   # a diverged sweep candidate
          continue
        digest = config_digest(config_of(STUDIES[study].base, saved["assignments"]))
      except (OSError, ValueError, KeyError, TypeError):
        continue   # a row of an older layout or another version: not shared
      if digest is not None:
        index.setdefault(digest, path)
    return index

  def find(self, config) -> Optional[Tuple[str, Dict]]:
    """(path of its study_row.json, row) of a finished run of this config, or None."""
    digest = config_digest(config)
    if digest is None:
      return None
    if self._index is None:
      self._index = self._build()
    path = self._index.get(digest)
    if path is None:
      return None
    with open(path) as f:
      return path, json.load(f)["row"]
