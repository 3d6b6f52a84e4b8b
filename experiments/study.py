"""Runs a seeded study: each row tuned, then trained for every seed; a table of
mean ± std per row and a paired verdict per claim (moejax/studies/runner.py).

  python experiments/study.py --study=moe_vs_dense --seeds=5 --workdir=/tmp/study_moe_vs_dense
  python experiments/study.py --study=num_experts --seeds=3 --workdir=... --plan
  python experiments/study.py --study=granularity --scale=large --workers=2 --workdir=...

Each row is first tuned on seed 0 (--tune: its peak learning rate over 0.5x,
1x, 2x its default; 'balance' also sweeps the load-balance weight over 1e-3
and 1e-2), judged on a held-out slice of the train split, then trained for
seeds 0..--seeds-1 at the chosen values in <workdir>/<row>/<tuned>/seed_<s>.
Finished runs are reused (resume any time). A claim is judged on the per-seed
differences between its two rows: 'holds' when their 95% Student-t interval
lies below 0, 'does not hold' when above, else 'inconclusive'. Writes
results.md, results.json and results.png; --scale=large writes them to
<workdir>/large, and with both scales <workdir>/scales.md compares them.
"""

from __future__ import annotations

from absl import flags

from moejax.cli import fail, require_workdir, run
from moejax.studies.runner import SCALES, STUDIES, TUNABLE

_STUDY = flags.DEFINE_enum("study", None, sorted(STUDIES), "Which study to run.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per row (0, 1, ...). Where a paired interval "
                              "still includes 0 at 3 seeds, run 5.", lower_bound=1)
_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory of the runs and results.")
_SET = flags.DEFINE_multi_string("set", [], "field=value override applied to every row after "
                                 "the study's own, e.g. --set=train.num_steps=300 (repeatable).")
_TUNE = flags.DEFINE_string(
    "tune", "study", "Sweeps before the seeds, comma-separated, from: "
    f"{', '.join(TUNABLE)}; 'study' = the study's own (every study tunes lr; those whose rows "
    "differ in expert count also balance); 'none' = train every row at its default values.")
_EXTEND = flags.DEFINE_integer(
    "extend_edges", 0, "Where a row's best learning rate (balance weight) is the largest "
    "(smallest) of its sweep, also try twice (half) it (ten times, a tenth), up to this many "
    "times, until the choice lies inside the swept range. 0: only the sweep's values.",
    lower_bound=0)
_SCALE = flags.DEFINE_enum("scale", "base", list(SCALES), "'large': the study's second scale "
                           "(4x the training steps) in <workdir>/large, each row at the values "
                           "tuned at the base scale (<workdir>/results.json) where it has them.")
_WORKERS = flags.DEFINE_integer("workers", 1, "Runs trained at once, each in its own process "
                                "(2 on a 2-core CPU finishes ~1.5x sooner).", lower_bound=1)
_ROWS = flags.DEFINE_list("rows", None, "Train only these rows (and the rows they start "
                          "from). Other rows whose runs are all finished are reported too; "
                          "the claims between the reported rows are judged. Default: every row.")
_REJUDGE = flags.DEFINE_bool("rejudge", False, "Judge the claims of <workdir>'s results.json "
                             "(of --scale) again from its per-seed values, without training.")
_PLAN = flags.DEFINE_bool("plan", False, "Print the runs the study would train (finished ones "
                          "are reused) and their estimated CPU time, then stop.")


def _tune_value():
  value = _TUNE.value.strip()
  if value == "study":
    return None
  if value == "none":
    return ()
  return tuple(t.strip() for t in value.split(",") if t.strip())


def main(argv):
  require_workdir(argv, _WORKDIR.value)
  if _STUDY.value is None:
    fail(2, f"--study is required: one of {', '.join(sorted(STUDIES))}")
  from moejax.data import DataError
  from moejax.train import CheckpointError, TrainingError
  from moejax.train.guarantees import WorkdirError
  from moejax.studies.comparison import RunStopped
  from moejax.studies.runner import plan_study, rejudge, run_study
  from moejax.studies.report import markdown
  try:
    if _PLAN.value:
      plan = plan_study(_STUDY.value, _SEEDS.value, _WORKDIR.value, _SET.value, _tune_value(),
                        _SCALE.value, _ROWS.value, _EXTEND.value)
      _print_plan(plan)
      return
    if _REJUDGE.value:
      results = rejudge(_STUDY.value, _WORKDIR.value, _SCALE.value)
    else:
      results = run_study(_STUDY.value, _SEEDS.value, _WORKDIR.value, _SET.value,
                          tune=_tune_value(), scale=_SCALE.value, workers=_WORKERS.value,
                          rows=_ROWS.value, extend_edges=_EXTEND.value)
  except (DataError, CheckpointError, TrainingError, WorkdirError, RunStopped) as err:
    fail(1, str(err))
  except ValueError as err:  # a bad --set / --tune / --scale or an invalid row config
    fail(2, str(err))
  print("\n" + markdown(results))
  print(f"\nwrote results.md, results.json and results.png under {_WORKDIR.value}")


def _print_plan(plan):
  print(f"{_STUDY.value}, {_SEEDS.value} seed(s), scale {_SCALE.value}: runs, estimated on a "
        "2-core CPU one at a time (±30%; seeds of an untuned row are planned at its default "
        "values)")
  print(f"{'phase':<12} {'runs':>5} {'to train':>9} {'estimate':>10}")
  total = 0.0
  for phase, runs, todo, seconds in plan:
    total += seconds
    print(f"{phase:<12} {runs:>5} {todo:>9} {seconds / 60:>8.1f} m")
  print(f"{'total':<12} {sum(p[1] for p in plan):>5} {sum(p[2] for p in plan):>9} "
        f"{total / 60:>8.1f} m  (with --workers=2: ~{total / 60 * 0.64:.0f} m)")


if __name__ == "__main__":
  run(main)
