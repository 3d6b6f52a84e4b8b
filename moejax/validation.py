"""Field validation shared by every config dataclass (router, MoE, model,
data, train, mesh) and the converters: a bad value raises one ValueError
that names the field, the value and what is valid, e.g.

  ValueError: router.top_k=9 is invalid: must be <= num_experts + zero-computation
  (null, copy, constant) experts = 8
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence


def fail(field: str, value: Any, valid: str) -> None:
  """Raises the one-line error for field=value; valid says what would be."""
  raise ValueError(f"{field}={value!r} is invalid: {valid}")


def check_choice(field: str, value: Any, choices: Sequence[str]) -> None:
  if value not in choices:
    fail(field, value, "valid values are " + ", ".join(repr(c) for c in choices))


def check_int(field: str, value: Any, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    fail(field, value, f"must be an integer >= {minimum}")


def check_float(field: str, value: Any, minimum: float, inclusive: bool) -> None:
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  ok = ok and (value >= minimum if inclusive else value > minimum)
  if not ok:
    fail(field, value, f"must be a finite number {'>=' if inclusive else '>'} {minimum}")


def from_mapping(cls, values, prefix: str):
  """cls(**values), with an unknown key reported as '<prefix><key>=...'."""
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if unknown:
    fail(f"{prefix}{unknown[0]}", values[unknown[0]],
         f"unknown field; valid fields are {', '.join(sorted(known))}")
  return cls(**values)
