"""orbax checkpoints of (train state, data-iterator state, config).

Layout: <workdir>/checkpoints/<step>/{state, data, config}. orbax writes each
checkpoint into a temporary directory and renames it when complete, so a
crash mid-write never leaves a partial checkpoint that `latest_step` returns.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import jax
import orbax.checkpoint as ocp

from moejax.train.config import incompatible_fields


class CheckpointError(ValueError):
  """A workdir whose checkpoints cannot be resumed with this config."""


class Checkpointer:
  """Keep-N, optionally async, checkpoint manager for one workdir."""

  def __init__(self, workdir: str, keep: int, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def saved_config(self, step: int) -> Dict[str, Any]:
    restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return restored["config"]

  def check_compatible(self, step: int, config: Dict[str, Any]) -> None:
    """Raises CheckpointError naming the state-defining fields that differ."""
    diff = incompatible_fields(self.saved_config(step), config)
    if diff:
      shown = "; ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())
      raise CheckpointError(
          f"workdir holds a checkpoint (step {step}, {self.directory}) from an incompatible "
          f"config: {shown}. Use a new --workdir, or the checkpoint's values.")

  def save(self, step: int, state: dict, data_state: Dict[str, Any],
           config: Dict[str, Any]) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(config)), force=True)

  def restore(self, step: int, target_state: dict) -> Tuple[dict, Dict[str, Any]]:
    """(state, data-iterator state) of `step`, shaped and placed like target_state."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]

  def restore_as_saved(self, step: int) -> dict:
    """The train state of `step` as saved, with no target to shape it (for
    reading a model out of a workdir: export, generation, upcycling)."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))
    return restored["state"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
