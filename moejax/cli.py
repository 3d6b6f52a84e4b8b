"""Shared entry point for the absl binaries in experiments/: flag parsing,
config loading, and the one error path (`fail`): every error a binary
reports is one line on stderr, `error: ...`, with exit code 1 (data, IO,
checkpoints, training) or 2 (bad flags or config). Anything unexpected is
caught by `run` and reported the same way; --verbosity=1 shows the traceback.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import warnings
from typing import Callable, NoReturn

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags


# `--config.a.b=None` overrides. ml_collections cannot parse None for a typed
# field, so run() takes them out of argv and config_value() applies them.
_NONE_OVERRIDE = re.compile(r"^--config\.([A-Za-z_][\w.]*)=(None|none)$")
_none_overrides: list = []


def fail(code: int, message: str) -> NoReturn:
  """Reports `message` as one line and exits with `code`. Exits at once
  (os._exit): background writers (orbax, tensorstore) that were interrupted
  would otherwise print their tracebacks while the interpreter shuts down."""
  sys.stdout.flush()
  sys.stderr.write(f"error: {message}\n")
  sys.stderr.flush()
  os._exit(code)


def _die(err: Exception) -> NoReturn:
  text = str(err).strip().strip('"')
  # absl puts the cause of a config file's failure on the lines after the
  # first ("Error whilst parsing config file:\n  <cause>"): keep them, on one line.
  message = " ".join(line.strip() for line in text.splitlines() if line.strip()) or \
      type(err).__name__
  fail(2, f"bad flag or config override: {message}")


def _verbose() -> bool:
  return flags.FLAGS["verbosity"].present and flags.FLAGS.verbosity >= 1


class _QuietBackgroundErrors(logging.Filter):
  """Drops orbax's and asyncio's own reports of a failed background write:
  the binary reports the same failure itself, in one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and (
        "orbax" in record.pathname or record.name == "asyncio"))


def _quiet_excepthook(exc_type, exc, tb) -> None:
  """tensorstore's write callbacks print 'Event loop is closed' once per
  pending write when orbax's background save fails; the failure itself is
  reported by the binary."""
  if exc_type is RuntimeError and str(exc) == "Event loop is closed":
    return
  sys.__excepthook__(exc_type, exc, tb)


def _ignore_calls_into_closed_loops() -> None:
  """Makes call_soon_threadsafe on a closed asyncio loop a no-op. Some of
  tensorstore's callbacks (see _quiet_excepthook) print their error from C++
  without going through sys.excepthook; the call they make has nothing left
  to do once orbax has closed its loop after a failed save."""
  import asyncio
  original = asyncio.BaseEventLoop.call_soon_threadsafe

  def call_soon_threadsafe(loop, *args, **kwargs):
    if loop.is_closed():
      return None
    return original(loop, *args, **kwargs)
  asyncio.BaseEventLoop.call_soon_threadsafe = call_soon_threadsafe


def _check_float_flags() -> None:
  """NaN and infinity are invalid for every float flag."""
  for name in flags.FLAGS:
    value = flags.FLAGS[name].value
    if isinstance(value, float) and not math.isfinite(value):
      fail(2, f"--{name}={value} is invalid: must be a finite number")


def define_config(default_path: str, help_text: str = "ml_collections config file."):
  """DEFINE_config_file('config', ...). ml_collections applies `--config.x=y`
  overrides right here, so an unknown field or bad type is reported as one
  line (exit code 2) instead of a traceback."""
  try:
    return config_flags.DEFINE_config_file("config", default_path, help_text)
  except Exception as err:  # ml_collections raises several types for bad overrides
    if isinstance(err, (KeyError, AttributeError)):
      err = ValueError(f"unknown config field {str(err).strip(chr(34))} in {sys.argv[1:]}")
    _die(err)


def run(main: Callable) -> None:
  """app.run(main), with bad flags reported as one line (exit code 2)."""
  # JAX logs each accelerator backend it could not find (e.g. "Unable to
  # initialize backend 'tpu'") at INFO; on a CPU machine that is only noise.
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  argv = []
  for arg in sys.argv:
    match = _NONE_OVERRIDE.match(arg)
    if match:
      _none_overrides.append(match.group(1))
    else:
      argv.append(arg)
  app.define_help_flags()  # --help / --helpfull: app.run would define them, but parses later
  try:
    remaining = flags.FLAGS(argv)
  except Exception as err:
    _die(err)
  _check_float_flags()
  if not flags.FLAGS["verbosity"].present:
    # orbax and TFDS log every file they write at INFO; --verbosity=0 brings it back.
    absl_logging.set_verbosity(absl_logging.WARNING)
  if not _verbose():
    quiet = _QuietBackgroundErrors()
    absl_logging.get_absl_handler().addFilter(quiet)
    logging.getLogger("asyncio").addFilter(quiet)
    logging.getLogger().addFilter(quiet)
    sys.excepthook = _quiet_excepthook
    _ignore_calls_into_closed_loops()
    # A persistent compilation cache (JAX_COMPILATION_CACHE_DIR) that cannot be
    # written (disk full) slows the next start, nothing else: not the run's error.
    warnings.filterwarnings("ignore", message="Error writing persistent compilation cache")
  # Parse once: a second parse (app.run's own) re-registers the --config.x
  # override flags of a non-default --config file and fails.
  app.run(lambda argv: _guarded(main, argv), flags_parser=lambda argv: remaining)


def _guarded(main: Callable, argv) -> None:
  """main(argv), with any exception it lets through turned into one line."""
  try:
    main(argv)
  except Exception as err:
    if _verbose():
      raise
    text = " ".join(str(err).split()) or "(no message)"
    fail(1, f"{type(err).__name__}: {text[:500]} (rerun with --verbosity=1 for the traceback)")
  finally:
    sys.stdout.flush()


def config_overrides() -> dict:
  """{'model.d_model': 64, ...}: the config fields set on the command line
  (--config.x=y, including --config.x=None)."""
  overrides = dict(config_flags.get_override_values(flags.FLAGS["config"]))
  overrides.update({path: None for path in _none_overrides})
  return overrides


def config_value(config_flag):
  """The parsed config, with `--config.x=None` overrides applied; a config
  file that fails to load, returns no ConfigDict, or names an unknown field,
  is one line (exit 2)."""
  try:
    value = config_flag.value
    # A file that failed to load is a proxy that raises on first use.
    has_keys = hasattr(value, "keys")
  except (OSError, ImportError, SyntaxError, TypeError) as err:
    lines = [l.strip() for l in str(err).splitlines() if l.strip()]
    detail = lines[-1] if lines else type(err).__name__
    fail(2, f"--config could not be loaded: {detail}")
  if not has_keys or not hasattr(value, "to_dict"):
    fail(2, f"--config: get_config() returned a {type(value).__name__}; it must return an "
            "ml_collections.ConfigDict")
  for path in _none_overrides:
    *parents, leaf = path.split(".")
    node = value
    for part in parents:
      node = node.get(part) if hasattr(node, "get") else None
    if not hasattr(node, "keys") or leaf not in node:
      _die(ValueError(f"unknown config field {path!r} in --config.{path}=None"))
    node[leaf] = None
  return value



def require_workdir(argv, workdir: str) -> None:
  """One-line exits for stray positional arguments and a missing --workdir."""
  if len(argv) > 1:
    fail(2, f"unexpected arguments {argv[1:]}")
  if not workdir:
    fail(2, "--workdir is required")


def write_rows(path: str, rows) -> None:
  """A binary's result rows as indented JSON at `path` (if given), said once."""
  if path:
    import json
    with open(path, "w") as f:
      json.dump(rows, f, indent=1)
    print(f"wrote {path}")


def data_config_or_exit(**fields):
  """moejax.data.DataConfig from `fields` (name, data_dir, seq_len, ...); a
  bad value exits 2 with its one line (binaries that evaluate a model)."""
  from moejax.data.config import data_config_from_mapping
  try:
    return data_config_from_mapping(fields)
  except ValueError as err:
    fail(2, str(err))
