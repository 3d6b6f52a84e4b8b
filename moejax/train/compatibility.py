"""Which config fields a checkpoint depends on, and whether a saved config
and the current one agree on them (checkpoint.py refuses a resume that
does not)."""

from __future__ import annotations

from typing import Any, Dict

from moejax.routing.config import migrate_flat_router_fields
from moejax.train.defaults import experiment_config


def migrate_saved_config(saved: Dict[str, Any]) -> Dict[str, Any]:
  """A saved experiment config (a checkpoint's, a workdir's config.json) in
  today's layout: router fields of earlier layouts moved to their family
  sections (moejax.routing.config.MOVED_FIELDS)."""
  router = saved.get("model", {}).get("moe", {}).get("router") if isinstance(
      saved.get("model"), dict) and isinstance(saved["model"].get("moe"), dict) else None
  if not isinstance(router, dict):
    return saved
  moe = {**saved["model"]["moe"], "router": migrate_flat_router_fields(router)}
  return {**saved, "model": {**saved["model"], "moe": moe}}


def flatten(values: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for key, value in values.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      # Tuples come back from a JSON checkpoint as lists; compare them as lists.
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


# Fields a checkpoint depends on: the parameter / optimizer-state structure and
# the data order. Anything else (steps, learning rate, logging) may change on resume.
STATE_DEFINING = ("seed", "model.", "data.name", "data.train_split", "data.batch_size",
                  "data.seq_len", "data.shuffle_seed", "data.tokenizer", "train.trainable")


def incompatible_fields(saved: Dict[str, Any], current: Dict[str, Any]) -> Dict[str, tuple]:
  """{field: (saved value, current value)} for state-defining fields that differ.

  A field the saved config lacks (a checkpoint from before the field existed)
  is compatible when the current value is the field's default: the older code
  behaved as that default does."""
  a, b = flatten(migrate_saved_config(saved)), flatten(current)
  defaults = flatten(experiment_config().to_dict())
  a.update({k: defaults[k] for k in b if k not in a and k in defaults and b[k] == defaults[k]})
  keys = sorted(k for k in set(a) | set(b)
                if any(k == p or (p.endswith(".") and k.startswith(p)) for p in STATE_DEFINING))
  if a.get("model.moe_every") == b.get("model.moe_every") == 0:
    # A dense model has no MoE block: its model.moe fields define no state.
    keys = [k for k in keys if not k.startswith("model.moe.")]
  return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}
