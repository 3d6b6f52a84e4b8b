"""Shared test helpers. Tests run on CPU; keep shapes small.

Most of the suite's time is XLA compilation, and many tests compile the same
programs (the train binary's subprocesses, the tiny configs, the 8-device
suite's processes). One test run therefore shares two folders between its
xdist workers and every subprocess they start, through environment variables
set before any of them starts: JAX's persistent compilation cache, and a TFDS
data dir where the embedded datasets are built once. Both are removed when
the run ends, so no run reuses another's cache. XLA:CPU also compiles with
LLVM's optimisations off (--xla_backend_optimization_level=0) and with its
older elemental fusion emitters instead of the MLIR ones
(--xla_cpu_use_fusion_emitters=false): the tests' shapes are tiny, so
compiling fast matters more than running fast. Each flag halves the compile
time (numerics stay IEEE: XLA:CPU uses no fast-math here).
"""

import contextlib
import fcntl
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest
from absl import flags

# Libraries that read absl flags (tokamax) would parse pytest's own argv
# (-q, -k ...) and fail outside xdist: nothing in the tests sets a flag.
flags.FLAGS.mark_as_parsed()

# tests/multidevice needs 8 fake devices, fixed when JAX starts: it runs in its
# own process (tests/test_multidevice.py sets MOEJAX_MULTIDEVICE=1 there).
if os.environ.get("MOEJAX_MULTIDEVICE") != "1":
  collect_ignore = ["multidevice"]

_SHARED = "MOEJAX_TEST_SHARED_DIR"
# XLA:CPU flags that trade run time for compile time (see the docstring).
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def pytest_configure(config):
  if _SHARED in os.environ:   # an xdist worker or a subprocess of this run
    return
  shared = tempfile.mkdtemp(prefix="moejax-tests-")
  config._moejax_shared_dir = shared
  os.environ[_SHARED] = shared
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(shared, "jax_cache")
  # Cache every program that takes more than 0.1 s to compile (default: 1 s).
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAST_COMPILE_FLAGS).strip()


# Tests that take a minute or more, started first so that they do not run
# alone at the end of the run while the other worker idles.
_SLOW_FIRST = ("test_multidevice.py", "test_multihost.py", "test_studies.py", "test_colabs.py",
               "test_faults.py")


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(_SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_unconfigure(config):
  shared = getattr(config, "_moejax_shared_dir", None)
  if shared:
    shutil.rmtree(shared, ignore_errors=True)


@contextlib.contextmanager
def _file_lock(path):
  with open(path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def data_dir():
  """The run's TFDS data dir: the embedded datasets are built into it once,
  by whichever worker gets there first (the others wait on a file lock)."""
  path = os.path.join(os.environ[_SHARED], "tfds")
  os.makedirs(path, exist_ok=True)
  from moejax.data import builders
  with _file_lock(path + ".lock"):
    for builder_class in builders.EMBEDDED.values():
      builder = builder_class(data_dir=path, file_format="array_record")
      if not builder.is_prepared():
        builder.download_and_prepare()
  return path
