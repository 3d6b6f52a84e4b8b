"""Trains several configs one after another and tabulates them: by default the
tiny MoE LM against its dense baseline with equal active parameters.

  python experiments/compare.py --workdir=/tmp/compare \
      [--configs=configs/lm_tiny.py,configs/lm_tiny_dense.py] [--set=train.num_steps=300]

Each config trains in <workdir>/<config name> (resuming if it is there), then
<workdir>/results.md and results.json hold: params (total / active per token),
final train loss, eval loss, tokens or examples per second, expert balance and
drop fraction (MoE only). For routers, see router_zoo.py.
"""

from __future__ import annotations

import os

from absl import flags

from moejax.cli import fail, require_workdir, run

_CONFIGS = flags.DEFINE_list("configs", ["configs/lm_tiny.py", "configs/lm_tiny_dense.py"],
                             "Config files to train and compare.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory of the runs' workdirs.")
_SET = flags.DEFINE_multi_string("set", [], "field=value override applied to every config, "
                                 "e.g. --set=train.num_steps=300 (repeatable).")


def main(argv):
  require_workdir(argv, _WORKDIR.value)
  from moejax.data import DataError
  from moejax.train import CheckpointError, TrainingError
  from moejax.studies.comparison import (apply_override, load_config_file, train_row,
                                       write_results)

  rows = []
  for path in _CONFIGS.value:
    name = os.path.basename(path)[:-3]
    try:
      config = load_config_file(path)
      for assignment in _SET.value:
        apply_override(config, assignment)
    except ValueError as err:
      fail(2, f"--configs: {err}" if "does not exist" in str(err) else str(err))
    workdir = os.path.join(_WORKDIR.value, name)
    print(f"\n=== {name} ({path}) -> {workdir}", flush=True)
    try:
      rows.append(train_row(name, config, workdir))
    except ValueError as err:
      fail(2, f"{path}: config.{err}")
    except (DataError, CheckpointError, TrainingError) as err:
      fail(1, f"{name}: {err}")
  table = write_results(rows, _WORKDIR.value)
  print("\n" + table)
  print(f"\nwrote {_WORKDIR.value}/results.md and results.json")


if __name__ == "__main__":
  run(main)
