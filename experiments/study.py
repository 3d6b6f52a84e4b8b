"""Runs a seeded study: every row of the study for every seed, then a table
of mean ± std per row and a verdict per claim (moejax/train/studies.py).

  python experiments/study.py --study=moe_vs_dense --seeds=3 --workdir=/tmp/study_moe_vs_dense
  python experiments/study.py --study=num_experts --seeds=3 --workdir=... --set=train.num_steps=300

Studies: moe_vs_dense, num_experts, granularity, balancing, capacity, vit_routers.
Each row trains in <workdir>/<row>/seed_<s> (resuming if it is there). Writes
<workdir>/results.md (table + "claim -> measured -> verdict" lines),
results.json and results.png (eval loss, mean ± std). A verdict is 'holds'
or 'does not hold' when the mean ± std intervals are disjoint, else
'inconclusive'.
"""

from __future__ import annotations

from absl import flags

from moejax.cli import fail, require_workdir, run
from moejax.train.studies import STUDIES

_STUDY = flags.DEFINE_enum("study", None, sorted(STUDIES), "Which study to run.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per row (0, 1, ...).", lower_bound=1)
_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory of the runs and results.")
_SET = flags.DEFINE_multi_string("set", [], "field=value override applied to every row after "
                                 "the study's own, e.g. --set=train.num_steps=300 (repeatable).")


def main(argv):
  require_workdir(argv, _WORKDIR.value)
  if _STUDY.value is None:
    fail(2, f"--study is required: one of {', '.join(sorted(STUDIES))}")
  from moejax.data import DataError
  from moejax.train import CheckpointError, TrainingError
  from moejax.train.guarantees import WorkdirError
  from moejax.train.studies import markdown, run_study
  try:
    results = run_study(_STUDY.value, _SEEDS.value, _WORKDIR.value, _SET.value)
  except (DataError, CheckpointError, TrainingError, WorkdirError) as err:
    fail(1, str(err))
  except ValueError as err:  # a bad --set or an invalid row config
    fail(2, str(err))
  print("\n" + markdown(results))
  print(f"\nwrote {_WORKDIR.value}/results.md, results.json and results.png")


if __name__ == "__main__":
  run(main)
