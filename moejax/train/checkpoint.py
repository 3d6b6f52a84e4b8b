"""orbax checkpoints of (train state, data-iterator state, config), verified.

Layout: <workdir>/checkpoints/<step>/{state, data, config, integrity}. orbax
writes each checkpoint into a temporary directory and renames it when
complete, so a crash mid-write never leaves a partial checkpoint that
`latest_step` returns; tmp folders a crash leaves behind are removed when the
manager opens.

`integrity` holds a checksum of every state array plus digests of the data
and config records (moejax.train.guarantees), saved in the same commit.
`restore_latest` verifies a step before using it: a step that cannot be read
or does not match its record is renamed aside to `<step>.corrupt` (never
deleted), reported in one line, and the next older step is tried.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import orbax.checkpoint as ocp

from moejax.train.compatibility import incompatible_fields, migrate_saved_config
from moejax.train.guarantees import first_mismatch, tree_checksums


class CheckpointError(ValueError):
  """A workdir whose checkpoints cannot be resumed with this config, or a
  checkpoint that cannot be written."""


class CorruptCheckpoint(Exception):
  """A checkpoint step that cannot be read or fails verification."""


def _digest(record: Any) -> str:
  return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _one_line(err: BaseException) -> str:
  """The error on one line; a long text keeps its start and its end, where
  nested errors (tensorstore's) put the innermost cause."""
  text = " ".join(str(err).split())
  if len(text) > 300:
    text = f"{text[:140]} ... {text[-140:]}"
  return f"{type(err).__name__}: {text}" if text else type(err).__name__


# tensorstore reports a failed write as a ValueError whose text nests the OS
# error at some depth, in wordings that vary with the write that failed, e.g.
#   ... Failed writing: "<path>": Failed to write N bytes to file 11: File too large [os_error_code='27']
#   ... Error opening "zarr" driver: Error writing "<key>" in OCDBT database at local file "<dir>": ...
# Only the error code is reliable: take it, and the last absolute path quoted before it.
_TENSORSTORE_OS_ERROR_CODE = re.compile(r"os_error_code='?(?P<errno>\d+)'?")
_QUOTED_ABSOLUTE_PATH = re.compile(r'"(/[^"]+)"')


def _tensorstore_os_error(text: str) -> Optional[str]:
  code = _TENSORSTORE_OS_ERROR_CODE.search(text)
  if not code:
    return None
  errno = int(code["errno"])
  paths = _QUOTED_ABSOLUTE_PATH.findall(text[:code.start()]) or _QUOTED_ABSOLUTE_PATH.findall(text)
  return f"[Errno {errno}] {os.strerror(errno)}: {paths[-1] if paths else '?'}"


def _write_failure(err: BaseException) -> str:
  """'[Errno N] strerror: path' for the OS error behind a failed save, or the
  error's own text when it has none."""
  original, seen = err, set()
  while err is not None and id(err) not in seen:
    if isinstance(err, OSError) and err.errno:
      return f"[Errno {err.errno}] {err.strerror}: {err.filename}"
    found = _tensorstore_os_error(str(err))
    if found:
      return found
    seen.add(id(err))
    err = err.__cause__ or err.__context__
  return _one_line(original)


class Checkpointer:
  """Keep-N, optionally async, verified checkpoint manager for one workdir."""

  def __init__(self, workdir: str, keep: int, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save,
                                           cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._saving: Optional[int] = None

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def saved_config(self, step: int) -> Dict[str, Any]:
    """The experiment config `step` was saved with, in today's layout."""
    restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    saved = restored["config"]
    return migrate_saved_config(saved) if isinstance(saved, dict) else saved

  def check_compatible(self, step: int, config: Dict[str, Any],
                       saved: Optional[Dict[str, Any]] = None) -> None:
    """Raises CheckpointError naming the state-defining fields that differ
    between `config` and step's saved config (read unless given)."""
    diff = incompatible_fields(self.saved_config(step) if saved is None else saved, config)
    if diff:
      shown = "; ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())
      raise CheckpointError(
          f"workdir holds a checkpoint (step {step}, {self.directory}) from an incompatible "
          f"config: {shown}. Use a new --workdir, or the checkpoint's values.")

  def save(self, step: int, state: dict, data_state: Dict[str, Any],
           config: Dict[str, Any]) -> None:
    integrity = {"state": tree_checksums(state), "data": _digest(data_state),
                 "config": _digest(config)}
    try:  # orbax first waits for the previous async save, and raises its error
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
          config=ocp.args.JsonSave(config), integrity=ocp.args.JsonSave(integrity)), force=True)
    except Exception as err:
      self._raise_save_error(err)
    self._saving = step

  def check_for_errors(self) -> None:
    """CheckpointError (one line: path and errno) if an async save failed;
    orbax's tmp folder for it is removed, finished checkpoints are kept."""
    try:
      self._manager.check_for_errors()
    except Exception as err:  # orbax re-raises the writer thread's error
      self._raise_save_error(err)

  def _raise_save_error(self, err: BaseException):
    self._remove_tmp_dirs()
    raise CheckpointError(f"checkpoint for step {self._saving} could not be written: "
                          f"{_write_failure(err)}") from None

  def _remove_tmp_dirs(self) -> None:
    if jax.process_index() != 0 or not os.path.isdir(self.directory):
      return
    for name in os.listdir(self.directory):
      if ".orbax-checkpoint-tmp" in name:
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def _restore_verified(self, step: int, target_state: Optional[dict]):
    """(state, data state) of `step`; CorruptCheckpoint if unreadable or altered."""
    state_args = ocp.args.StandardRestore(
        None if target_state is None else
        jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state))
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=state_args, data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore(),
          integrity=ocp.args.JsonRestore()))
    except Exception as err:  # orbax / tensorstore raise many types for damaged files
      raise CorruptCheckpoint(f"it cannot be read ({_one_line(err)})") from None
    record = restored["integrity"]
    if not isinstance(record, dict) or not isinstance(record.get("state"), dict):
      raise CorruptCheckpoint("its integrity record is missing or malformed")
    problem = first_mismatch(record["state"], tree_checksums(restored["state"]))
    if problem is None and record.get("data") != _digest(restored["data"]):
      problem = "its data-iterator record does not match its digest"
    if problem is None and record.get("config") != _digest(restored["config"]):
      problem = "its config record does not match its digest"
    if problem:
      raise CorruptCheckpoint(problem)
    return restored["state"], restored["data"]

  def set_aside(self, step: int) -> str:
    """Renames checkpoints/<step> to <step>.corrupt (.corrupt-2, ... if taken)."""
    source = os.path.join(self.directory, str(step))
    target, n = f"{source}.corrupt", 1
    while os.path.exists(target):
      n += 1
      target = f"{source}.corrupt-{n}"
    if jax.process_index() == 0:
      os.rename(source, target)
    self._manager.reload()
    return target

  def restore_latest(self, target_state: Optional[dict], config: Optional[Dict[str, Any]],
                     log: Callable[[str], None]) -> Optional[Tuple[int, dict, Dict[str, Any]]]:
    """(step, state, data state) of the newest step that verifies, or None when
    there are no checkpoints. Damaged steps are set aside with one log line
    each; CheckpointError when every step is damaged, or when a readable
    step comes from a config incompatible with `config` (unless None)."""
    set_aside = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        try:
          saved = self.saved_config(step)
        except Exception as err:
          raise CorruptCheckpoint(f"its config cannot be read ({_one_line(err)})") from None
        if not isinstance(saved, dict):
          raise CorruptCheckpoint("its config record is not a JSON object")
        if config is not None:
          self.check_compatible(step, config, saved)
        state, data_state = self._restore_verified(step, target_state)
      except CorruptCheckpoint as err:
        moved = self.set_aside(step)
        set_aside.append(step)
        log(f"checkpoint step {step} is unusable: {err}; moved aside to {moved}")
        continue
      return step, state, data_state
    if set_aside:
      raise CheckpointError(f"no checkpoint in {self.directory} verifies (steps "
                            f"{', '.join(map(str, set_aside))} were damaged and moved aside "
                            "to <step>.corrupt); start a new --workdir or restore a backup")
    return None

  def restore_as_saved(self, step: Optional[int] = None) -> Tuple[int, dict]:
    """(step, train state as saved) of `step` or the newest step that
    verifies, with no target to shape it (for reading a model out of a
    workdir: export, generation, upcycling). Nothing is moved aside."""
    steps = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
    problems = []
    for candidate in steps:
      try:
        return candidate, self._restore_verified(candidate, None)[0]
      except CorruptCheckpoint as err:
        problems.append(f"step {candidate}: {err}")
    raise CheckpointError(f"no checkpoint in {self.directory} verifies ("
                          f"{'; '.join(problems) or 'there are none'})")

  def wait(self) -> None:
    try:
      self._manager.wait_until_finished()
    except Exception as err:
      self._raise_save_error(err)

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._manager.close()
