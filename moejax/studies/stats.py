"""The statistics a study judges its claims with.

A claim "`better` has a lower metric than `worse`" is judged on the paired
differences d_s = better_s - worse_s over seeds s (rows of one seed share
their initialisation seed and data order): mean, sample std, n and the 95%
Student-t interval mean ± t_{0.975, n-1} · std / sqrt(n). It *holds* when the
interval lies below 0, *does not hold* when it lies above 0, and is
*inconclusive* otherwise (always with one seed: no interval).

Pairing removes what the rows of one seed share (the initialisation draw and
the batches): with 3 seeds, a gap of 0.011 nats whose per-row spreads are
±0.009 can still be decided when every seed agrees on its sign.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np
from scipy import stats

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


def mean_std(values: Sequence[float]):
  """(mean, sample std; 0 for one value)."""
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def paired_difference(better: Sequence[float], worse: Sequence[float],
                      confidence: float = 0.95) -> Dict:
  """The paired difference better - worse (per seed, same order in both) with
  its Student-t interval and verdict: {'delta', 'std', 'n', 't', 'low',
  'high', 'differences', 'verdict'}; 't', 'low', 'high' are None for n = 1."""
  better = np.asarray(better, np.float64)
  worse = np.asarray(worse, np.float64)
  if better.shape != worse.shape or better.ndim != 1 or better.size == 0:
    raise ValueError(f"paired values need one per seed in both rows; got {better.size} and "
                     f"{worse.size}")
  d = better - worse
  n = d.size
  delta, std = mean_std(d)
  low = high = t = None
  if n > 1:
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    low, high = delta - half, delta + half
    t = delta / (std / math.sqrt(n)) if std > 0 else math.copysign(math.inf, delta) if delta else 0.0
  return {"delta": delta, "std": std, "n": int(n), "t": t, "low": low, "high": high,
          "differences": d.tolist(), "verdict": paired_verdict(low, high)}


def paired_verdict(low: Optional[float], high: Optional[float]) -> str:
  """holds: the interval lies below 0; does not hold: above 0."""
  if low is None or high is None:
    return INCONCLUSIVE
  if high < 0:
    return HOLDS
  if low > 0:
    return FAILS
  return INCONCLUSIVE


def trend(delta_small: float, delta_large: float) -> str:
  """How a claim's gap (better - worse; negative = the claim's direction)
  moved from the smaller scale to the larger: 'flipped' when its sign
  changed, else 'grew' / 'shrank' by its size."""
  if delta_small == 0 or delta_large == 0 or (delta_small < 0) != (delta_large < 0):
    return "flipped"
  return "grew" if abs(delta_large) > abs(delta_small) else "shrank"


def choose(candidates: Sequence[float], losses: Sequence[Optional[float]]) -> float:
  """The candidate with the lowest held-out loss (a run that diverged has
  None / NaN and is never chosen); ties go to the earlier candidate."""
  finite = [(loss, i) for i, loss in enumerate(losses)
            if loss is not None and math.isfinite(loss)]
  if not finite:
    raise ValueError(f"every candidate of the sweep {list(candidates)} diverged")
  return candidates[min(finite)[1]]


# Sweeps that go on past an edge (extend_edges): the next candidate beyond the
# largest (smallest) one when that one was chosen. The balance weight's sweep
# has two values a decade apart; it goes on by a decade.
EXTENDABLE = {"train.learning_rate": (lambda value: value * 2.0, lambda value: value * 0.5),
              "train.load_balance_weight": (lambda value: float(f"{value * 10:.6g}"),
                                            lambda value: float(f"{value / 10:.6g}"))}


def edge_extension(key: str, candidates: Sequence[float], chosen: float) -> Optional[float]:
  """The candidate to try next when `chosen` is at an edge of an extendable
  sweep (candidates ascending), else None."""
  if key not in EXTENDABLE or len(candidates) < 2:
    return None
  above, below = EXTENDABLE[key]
  if chosen == candidates[-1]:
    return above(chosen)
  if chosen == candidates[0]:
    return below(chosen)
  return None
