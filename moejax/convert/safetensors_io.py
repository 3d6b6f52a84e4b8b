"""Reading and writing safetensors files and HuggingFace checkpoint folders.

The format is simple enough to own: 8 bytes (little-endian u64) of header
length, a JSON header {name: {dtype, shape, data_offsets: [begin, end]}, and
optional "__metadata__": {str: str}}, then the raw little-endian tensor bytes.
Tensors are read through a memory map, so a large checkpoint is not loaded
twice. No pickle is involved anywhere: PyTorch `.bin` / `.pt` checkpoints are
refused with instructions to convert them.

A checkpoint folder holds config.json and either model.safetensors or shards
listed by model.safetensors.index.json ({"weight_map": {name: file}}).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
from typing import Dict, Iterable, Iterator, Mapping, Optional, Tuple

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_CODES = {dtype: code for code, dtype in DTYPES.items()}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CONVERT_HINT = (
    "moejax reads safetensors only (pickle checkpoints can run code when loaded). Convert it "
    "once with transformers: AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT, "
    "safe_serialization=True)")


class CheckpointFormatError(ValueError):
  """A checkpoint file or folder that cannot be read as safetensors."""


def _read_header(path: str) -> Tuple[dict, int]:
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) < 8:
      raise CheckpointFormatError(f"{path}: not a safetensors file (shorter than 8 bytes)")
    (length,) = struct.unpack("<Q", raw)
    if length > os.path.getsize(path) - 8:
      raise CheckpointFormatError(
          f"{path}: not a safetensors file (header length {length} exceeds the file)")
    try:
      header = json.loads(f.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
      raise CheckpointFormatError(f"{path}: not a safetensors file (bad header: {err})") from None
  return header, 8 + length


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
  """{name: array} of one .safetensors file (read-only memory-mapped arrays)."""
  if path.endswith(PICKLE_SUFFIXES):
    raise CheckpointFormatError(f"{path}: a PyTorch pickle checkpoint. {CONVERT_HINT}")
  header, data_start = _read_header(path)
  header.pop("__metadata__", None)
  tensors = {}
  for name, info in header.items():
    code = info.get("dtype")
    if code not in DTYPES:
      raise CheckpointFormatError(f"{path}: tensor {name!r} has dtype {code!r}; readable dtypes "
                                  f"are {', '.join(DTYPES)}")
    begin, end = info["data_offsets"]
    dtype, shape = DTYPES[code], tuple(info["shape"])
    if end - begin != int(np.prod(shape)) * dtype.itemsize:
      raise CheckpointFormatError(f"{path}: tensor {name!r} of shape {shape} and dtype {code} "
                                  f"has {end - begin} bytes")
    if not shape or 0 in shape:
      tensors[name] = np.zeros(shape, dtype)
    else:
      tensors[name] = np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin,
                                shape=shape)
  return tensors


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray],
                      metadata: Optional[Mapping[str, str]] = None) -> None:
  """Writes {name: array} (C order, little-endian) as one safetensors file."""
  header, offset, arrays = {}, 0, []
  for name in sorted(tensors):
    array = np.ascontiguousarray(tensors[name])
    if array.dtype.newbyteorder("<") in _CODES:
      array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    if array.dtype not in _CODES:
      raise CheckpointFormatError(f"tensor {name!r}: dtype {array.dtype} has no safetensors code")
    header[name] = {"dtype": _CODES[array.dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + array.nbytes]}
    offset += array.nbytes
    arrays.append(array)
  if metadata:
    header["__metadata__"] = dict(metadata)
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # keeps the tensor data 8-byte aligned
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for array in arrays:
      f.write(array.tobytes())


def _refuse_pickles(directory: str, names: Iterable[str]) -> None:
  pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
  if pickles:
    raise CheckpointFormatError(
        f"{directory} holds {', '.join(pickles)} but no safetensors weights. {CONVERT_HINT}")
  raise CheckpointFormatError(
      f"{directory} has no {SINGLE_FILE} or {INDEX_FILE}: not a safetensors checkpoint folder")


def read_checkpoint_dir(directory: str) -> Tuple[dict, Dict[str, np.ndarray]]:
  """(config.json as a dict, {tensor name: array}) of a HuggingFace folder."""
  if not os.path.isdir(directory):
    raise CheckpointFormatError(f"{directory}: no such checkpoint folder")
  names = os.listdir(directory)
  config_path = os.path.join(directory, "config.json")
  if "config.json" not in names:
    raise CheckpointFormatError(f"{directory} has no config.json")
  with open(config_path) as f:
    config = json.load(f)
  if INDEX_FILE in names:
    with open(os.path.join(directory, INDEX_FILE)) as f:
      weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict):
      raise CheckpointFormatError(f"{directory}/{INDEX_FILE} has no 'weight_map'")
    tensors = {}
    for shard in sorted(set(weight_map.values())):
      shard_tensors = read_safetensors(os.path.join(directory, shard))
      tensors.update({k: v for k, v in shard_tensors.items() if weight_map.get(k) == shard})
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
      raise CheckpointFormatError(f"{directory}/{INDEX_FILE} lists {missing[0]!r} in "
                                  f"{weight_map[missing[0]]}, which does not hold it")
    return config, tensors
  if SINGLE_FILE in names:
    return config, read_safetensors(os.path.join(directory, SINGLE_FILE))
  _refuse_pickles(directory, names)


@contextlib.contextmanager
def staged_dir(directory: str) -> Iterator[str]:
  """Yields a temporary folder next to `directory` (which must not exist) and
  renames it to `directory` when the block succeeds; removes it otherwise."""
  if os.path.exists(directory):
    raise FileExistsError(f"{directory} exists; choose a new output folder")
  parent = os.path.dirname(os.path.abspath(directory))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".partial-", dir=parent)
  try:
    yield staging
    os.rename(staging, directory)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


def write_checkpoint_dir(directory: str, config: dict, tensors: Mapping[str, np.ndarray],
                         max_shard_bytes: int = 5 * 2**30) -> None:
  """Writes config.json + safetensors (sharded with an index past
  max_shard_bytes) into a new folder; it appears only once complete."""
  with staged_dir(directory) as staging:
    shards, current, size = [], {}, 0
    for name in sorted(tensors):
      nbytes = np.asarray(tensors[name]).nbytes
      if current and size + nbytes > max_shard_bytes:
        shards.append(current)
        current, size = {}, 0
      current[name] = tensors[name]
      size += nbytes
    shards.append(current)
    if len(shards) == 1:
      write_safetensors(os.path.join(staging, SINGLE_FILE), shards[0], {"format": "pt"})
    else:
      weight_map = {}
      for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(os.path.join(staging, file), shard, {"format": "pt"})
        weight_map.update({name: file for name in shard})
      total = sum(np.asarray(t).nbytes for t in tensors.values())
      with open(os.path.join(staging, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(staging, "config.json"), "w") as f:
      json.dump(config, f, indent=2, sort_keys=True)
