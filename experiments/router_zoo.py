"""Router zoo: the tiny MoE LM trained with each router at equal active
parameters and equal steps, tabulated (Markdown + JSON) and plotted.

  python experiments/router_zoo.py --workdir=/tmp/router_zoo [--routers=top2_capacity,soft_moe]
      [--base_config=configs/lm_tiny.py] [--set=train.num_steps=300]

Every entry (moejax/studies/router_zoo.py) starts from --base_config (lm_tiny:
8 experts x d_ff 256, top-2) and changes only its routing; top-1 routers get experts twice as wide so that
active parameters per token stay equal. Runs train in <workdir>/<router>
(resuming when present); <workdir>/results.md, results.json and routers.png
hold the outcome. Routers marked † in the table choose experts using other
tokens of the batch, future ones included, so their LM loss is optimistic.
"""

from __future__ import annotations

import os

from absl import flags

from moejax.cli import fail, require_workdir, run
from moejax.studies.router_zoo import DEFAULT_ROUTERS, SLOW_ON_CPU, ZOO

_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory of the runs (required).")
_ROUTERS = flags.DEFINE_list("routers", list(DEFAULT_ROUTERS), "Which entries to run; any of "
                             f"{', '.join(ZOO)} (default: all but {', '.join(SLOW_ON_CPU)}, "
                             "which is slow on CPU).")
_BASE = flags.DEFINE_string("base_config", "configs/lm_tiny.py", "Config every entry starts from.")
_SET = flags.DEFINE_multi_string("set", [], "field=value applied to every run after the entry's "
                                 "own overrides, e.g. --set=train.num_steps=300 (repeatable).")


def main(argv):
  require_workdir(argv, _WORKDIR.value)
  from moejax.data import DataError
  from moejax.train import CheckpointError, TrainingError
  from moejax.studies.comparison import RunStopped, load_config_file, train_row, write_results
  from moejax.studies.router_zoo import plot_zoo, zoo_configs
  try:
    runs = zoo_configs(load_config_file(_BASE.value), _ROUTERS.value, _SET.value)
    from moejax.train import experiment_from_config
    for name, config in runs:  # validate every entry before training any
      try:
        experiment_from_config(config)
      except ValueError as err:
        raise ValueError(f"{name}: config.{err}") from None
  except ValueError as err:
    fail(2, str(err))
  rows = []
  for name, config in runs:
    workdir = os.path.join(_WORKDIR.value, name)
    print(f"\n=== {name}: {ZOO[name][0]} -> {workdir}", flush=True)
    try:
      rows.append(train_row(name, config, workdir))
    except (DataError, CheckpointError, TrainingError) as err:
      fail(1, f"{name}: {err}")
    except RunStopped as err:   # its message names the run
      fail(1, str(err))
  table = write_results(rows, _WORKDIR.value)
  plot_zoo(rows, os.path.join(_WORKDIR.value, "routers.png"))
  print("\n" + table)
  print(f"\nwrote {_WORKDIR.value}/results.md, results.json and routers.png")


if __name__ == "__main__":
  run(main)
