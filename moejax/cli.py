"""Shared entry point for the absl binaries in experiments/."""

from __future__ import annotations

import logging
import re
import sys
from typing import Callable, NoReturn

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags


# `--config.a.b=None` overrides. ml_collections cannot parse None for a typed
# field, so run() takes them out of argv and config_value() applies them.
_NONE_OVERRIDE = re.compile(r"^--config\.([A-Za-z_][\w.]*)=(None|none)$")
_none_overrides: list = []


def _die(err: Exception) -> NoReturn:
  text = str(err).strip().strip('"')
  message = text.splitlines()[0] if text else type(err).__name__
  sys.stderr.write(f"error: bad flag or config override: {message}\n")
  sys.exit(2)


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
  try:
    remaining = flags.FLAGS(argv)
  except Exception as err:
    _die(err)
  if not flags.FLAGS["verbosity"].present:
    # orbax and TFDS log every file they write at INFO; --verbosity=0 brings it back.
    absl_logging.set_verbosity(absl_logging.WARNING)
  # Parse once: a second parse (app.run's own) re-registers the --config.x
  # override flags of a non-default --config file and fails.
  app.run(main, flags_parser=lambda argv: remaining)


def config_value(config_flag):
  """The parsed config, with `--config.x=None` overrides applied; a config
  file that fails to load, or an unknown field, is one line (exit 2)."""
  try:
    value = config_flag.value
    value.keys()  # a file that failed to load is a proxy that raises on first use
  except (OSError, ImportError, SyntaxError) as err:
    lines = [l.strip() for l in str(err).splitlines() if l.strip()]
    detail = lines[-1] if lines else type(err).__name__
    sys.stderr.write(f"error: --config could not be loaded: {detail}\n")
    sys.exit(2)
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
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if not workdir:
    sys.exit("error: --workdir is required")
