"""What a training workdir guarantees, in one place: one writer at a time,
files that are either whole or absent, and checkpoint arrays that restore
bit for bit or are refused.

- `WorkdirLock`: an OS lock (fcntl.flock) on <workdir>/.lock, held by the
  run's process 0. The kernel drops it when the process dies, kill -9
  included, so a crashed run never leaves the workdir locked; a second run
  on the same workdir refuses in one line naming the holder's pid and host.
- `atomic_write_text`: write to a temporary file in the same folder, fsync,
  rename over the target (a reader sees the old or the new file, never a torn one).
- `tree_checksums`: two 32-bit sums per array over the array's raw bits,
  each word weighted by a distinct odd multiplier of its position. Changing
  any single word changes both sums; the record is saved inside the same
  orbax checkpoint as the arrays, so it commits with them atomically. Sums
  wrap mod 2**32, so they are exact in any order: arrays on accelerators or
  across hosts are summed on device (one compiled program per tree
  structure), arrays that all live in this process's CPU memory with numpy
  (the same numbers, without a second of tracing and compiling per run).
- `prepare_workdir`: one-line errors for a workdir that cannot hold a run
  (is a file, is under a file, is not writable).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import tempfile
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

LOCK_FILE = ".lock"
# Two odd 32-bit multipliers (Knuth's and a Murmur3 constant): odd weights make
# word -> word * weight a bijection mod 2**32, so a changed word always shows.
_MULTIPLIERS = (2654435761, 3432918353)


class WorkdirError(OSError):
  """A workdir that cannot be used (locked, not a folder, not writable)."""


def prepare_workdir(workdir: str) -> str:
  """Creates `workdir` if needed; returns its absolute path. WorkdirError
  (one line) when it is a file, lies under a file or cannot be written."""
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"--workdir={workdir} is a file, not a folder")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as err:
    raise WorkdirError(f"--workdir={workdir} cannot be created: {err.strerror} "
                       f"({err.filename or path})") from None
  try:
    with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
      pass
  except OSError as err:
    raise WorkdirError(f"--workdir={workdir} is not writable: {err.strerror}") from None
  return path


class WorkdirLock:
  """Exclusive lock on a workdir for the life of this object (see module doc)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: Optional[int] = None

  def acquire(self) -> "WorkdirLock":
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
      holder = os.read(fd, 256).decode(errors="replace").strip() or "unknown process"
      os.close(fd)
      if err.errno in (errno.EAGAIN, errno.EACCES):
        raise WorkdirError(f"workdir {os.path.dirname(self.path)} is in use by {holder}; "
                           "wait for that run to end or use another --workdir") from None
      raise
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # closing the descriptor drops the flock
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def atomic_write_text(path: str, text: str) -> None:
  """Replaces `path` with `text` all at once (see module doc)."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _as_words(x: jax.Array) -> jax.Array:
  """The raw bits of x as a flat uint32 vector (64-bit dtypes give 2 words each)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32).reshape(-1)


def _checksum(x: jax.Array) -> jax.Array:
  """[2] uint32: the two weighted sums of x's words (integer sums wrap mod 2**32,
  so the result does not depend on reduction order or sharding)."""
  words = _as_words(x)
  position = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
  # dtype: with jax_enable_x64, jnp.sum would widen to uint64 and the sums would differ.
  return jnp.stack([jnp.sum(words * (position * jnp.uint32(m)), dtype=jnp.uint32)
                    for m in _MULTIPLIERS])


# One compilation per tree structure; the sums come back replicated, so every
# process of a multi-host job can read them.
_tree_sums = jax.jit(lambda leaves: [_checksum(x) for x in leaves])


def _host_checksum(x) -> np.ndarray:
  """_checksum's two sums computed with numpy (uint32 arithmetic wraps alike)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  words = np.ascontiguousarray(np.asarray(x)).reshape(-1)
  if words.dtype.itemsize < 4:
    words = words.view(f"uint{8 * words.dtype.itemsize}").astype(np.uint32)
  else:   # 8-byte values: two words each, low word first, as lax.bitcast_convert_type
    words = words.view(np.uint32)
  position = np.arange(words.size, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
  return np.array([np.sum(words * (position * np.uint32(m)), dtype=np.uint32)
                   for m in _MULTIPLIERS], np.uint32)


def _in_host_memory(leaf) -> bool:
  """True for numpy arrays and for jax arrays whose every shard is on this process's CPU."""
  if not isinstance(leaf, jax.Array):
    return True
  return leaf.is_fully_addressable and all(d.platform == "cpu" for d in leaf.devices())


def tree_checksums(tree) -> Dict[str, str]:
  """{'params/block_0/...': 'dtype shape sums'} for every array leaf."""
  with_paths = [(jax.tree_util.keystr(path, simple=True, separator="/"), leaf)
                for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
                if hasattr(leaf, "dtype")]
  if all(_in_host_memory(leaf) for _, leaf in with_paths):
    sums = [_host_checksum(leaf) for _, leaf in with_paths]
  else:
    sums = jax.device_get(_tree_sums([jnp.asarray(leaf) for _, leaf in with_paths]))
  return {path: f"{np.dtype(leaf.dtype).name} {tuple(leaf.shape)} "
                f"{int(s[0]):08x}{int(s[1]):08x}"
          for (path, leaf), s in zip(with_paths, sums)}


def first_mismatch(expected: Dict[str, str], actual: Dict[str, str]) -> Optional[str]:
  """A one-line description of the first array whose checksum differs, or None."""
  for path in sorted(set(expected) | set(actual)):
    if expected.get(path) != actual.get(path):
      return (f"array {path} does not match its checksum (saved: {expected.get(path)}; "
              f"read: {actual.get(path)})")
  return None
