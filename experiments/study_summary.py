"""Prints (and writes to <dir>/SUMMARY.md) one table of every study's claims
found under --dir: per scale, the paired difference with its 95% interval,
whether the rows were tuned, the verdict and the trend between scales.

  python experiments/study_summary.py --dir=benchmarks/studies
"""

from __future__ import annotations

import os

from absl import flags

from moejax.cli import fail, run

_DIR = flags.DEFINE_string("dir", "benchmarks/studies", "Folder holding one folder per study "
                           "(what experiments/study.py --workdir wrote).")


def main(argv):
  del argv
  if not os.path.isdir(_DIR.value):
    fail(2, f"--dir={_DIR.value!r} is not a folder")
  from moejax.studies.report import summary_markdown
  text = summary_markdown(_DIR.value)
  with open(os.path.join(_DIR.value, "SUMMARY.md"), "w") as f:
    f.write(text + "\n")
  print(text)


if __name__ == "__main__":
  run(main)
