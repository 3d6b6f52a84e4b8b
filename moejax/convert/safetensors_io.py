"""Reading and writing safetensors files and HuggingFace checkpoint folders.

Every file is validated by the `safetensors` package before a byte of it is
used: the header is a JSON object of well-formed entries, dtypes are known,
offsets are non-negative, non-overlapping and cover the data section exactly,
and each tensor's byte length equals dtype size x shape (without overflow).
Tensors are then memory-mapped at the offsets that validation accepted, so
a large checkpoint is not loaded twice and every dtype ml_dtypes knows reads
as numpy (the package's own numpy loader copies each tensor and has no FP8).
Files are written by the package too.

No pickle is involved anywhere: PyTorch `.bin` / `.pt` checkpoints are
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
import safetensors
import safetensors.numpy

from moejax.data.tokenizer import copy_tokenizer_files

DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
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


def _validated_header(path: str) -> Tuple[dict, int]:
  """(header, offset of the data section) of a file the safetensors package
  accepts; CheckpointFormatError naming the file otherwise."""
  if not os.path.isfile(path):
    raise CheckpointFormatError(f"{path}: no such safetensors file")
  try:
    with safetensors.safe_open(path, framework="numpy"):
      pass
  except safetensors.SafetensorError as err:
    reason = str(err).replace("Error while deserializing header: ", "")
    raise CheckpointFormatError(f"{path}: not a valid safetensors file ({reason})") from None
  with open(path, "rb") as f:
    (length,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(length))
  return header, 8 + length


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
  """{name: array} of one .safetensors file (read-only memory-mapped arrays)."""
  if path.endswith(PICKLE_SUFFIXES):
    raise CheckpointFormatError(f"{path}: a PyTorch pickle checkpoint. {CONVERT_HINT}")
  header, data_start = _validated_header(path)
  header.pop("__metadata__", None)
  tensors = {}
  for name, info in header.items():
    code = info["dtype"]
    if code not in DTYPES:
      raise CheckpointFormatError(f"{path}: tensor {name!r} has dtype {code!r}; readable dtypes "
                                  f"are {', '.join(DTYPES)}")
    dtype, shape = DTYPES[code], tuple(info["shape"])
    if not shape or 0 in shape:
      begin, end = info["data_offsets"]
      with open(path, "rb") as f:
        f.seek(data_start + begin)
        tensors[name] = np.frombuffer(f.read(end - begin), dtype).reshape(shape)
    else:
      tensors[name] = np.memmap(path, dtype=dtype, mode="r",
                                offset=data_start + info["data_offsets"][0], shape=shape)
  return tensors


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray],
                      metadata: Optional[Mapping[str, str]] = None) -> None:
  """Writes {name: array} (C order, little-endian) as one safetensors file."""
  arrays = {}
  for name in sorted(tensors):
    array = np.ascontiguousarray(tensors[name])
    if array.dtype.newbyteorder("<") in _CODES:
      array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    if array.dtype not in _CODES:
      raise CheckpointFormatError(f"tensor {name!r}: dtype {array.dtype} has no safetensors code; "
                                  f"writable dtypes are {', '.join(DTYPES)}")
    arrays[name] = array
  safetensors.numpy.save_file(arrays, path, metadata=dict(metadata) if metadata else None)


def _refuse_pickles(directory: str, names: Iterable[str]) -> None:
  pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
  if pickles:
    raise CheckpointFormatError(
        f"{directory} holds {', '.join(pickles)} but no safetensors weights. {CONVERT_HINT}")
  raise CheckpointFormatError(
      f"{directory} has no {SINGLE_FILE} or {INDEX_FILE}: not a safetensors checkpoint folder")


def _read_json_object(path: str) -> dict:
  """A JSON file that must hold an object; CheckpointFormatError otherwise."""
  try:
    with open(path) as f:
      value = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
    raise CheckpointFormatError(f"{path} cannot be read as JSON: {err}") from None
  if not isinstance(value, dict):
    raise CheckpointFormatError(f"{path} holds a JSON {type(value).__name__}; expected an object")
  return value


def _shard_path(directory: str, shard) -> str:
  """The path of a shard named by the index; refuses names that leave the folder."""
  if not isinstance(shard, str) or not shard:
    raise CheckpointFormatError(f"{directory}/{INDEX_FILE} names shard {shard!r}; expected a "
                                "file name")
  root = os.path.realpath(directory)
  path = os.path.realpath(os.path.join(root, shard))
  if os.path.isabs(shard) or os.path.commonpath([root, path]) != root:
    raise CheckpointFormatError(f"{directory}/{INDEX_FILE} names shard {shard!r} outside the "
                                "checkpoint folder; shards must be files inside it")
  return path


def read_hf_config(directory: str) -> dict:
  """config.json of a HuggingFace folder, as a dict."""
  if not os.path.isdir(directory):
    raise CheckpointFormatError(f"{directory}: no such checkpoint folder")
  if not os.path.isfile(os.path.join(directory, "config.json")):
    raise CheckpointFormatError(f"{directory} has no config.json")
  return _read_json_object(os.path.join(directory, "config.json"))


def read_checkpoint_dir(directory: str) -> Tuple[dict, Dict[str, np.ndarray]]:
  """(config.json as a dict, {tensor name: array}) of a HuggingFace folder."""
  config = read_hf_config(directory)
  names = os.listdir(directory)
  if INDEX_FILE in names:
    weight_map = _read_json_object(os.path.join(directory, INDEX_FILE)).get("weight_map")
    if not isinstance(weight_map, dict):
      raise CheckpointFormatError(f"{directory}/{INDEX_FILE} has no 'weight_map' object")
    tensors = {}
    for shard in sorted(set(map(str, weight_map.values()))):
      shard_tensors = read_safetensors(_shard_path(directory, shard))
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
                         max_shard_bytes: int = 5 * 2**30,
                         tokenizer_from: Optional[str] = None) -> None:
  """Writes config.json + safetensors (sharded with an index past
  max_shard_bytes) into a new folder, with the tokenizer files of folder
  `tokenizer_from` if given; it appears only once complete."""
  with staged_dir(directory) as staging:
    copy_tokenizer_files(tokenizer_from, staging)
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
