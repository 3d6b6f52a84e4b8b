"""Text tokenized with a checkpoint's tokenizer (data.tokenizer), packed into
fixed-length next-token windows.

A split is tokenized once, up front, into one token stream that is cached as
int32 .npy files under <data_dir>/moejax_tokenized/ (keyed by the dataset,
split, text feature and the tokenizer files' SHA-256) and memory-mapped after
that. grain's own packing works on iterators; a token stream cut into windows
keeps the random access that shuffling and exact resumption need.

Documents: every example of a TFDS text dataset is one document, encoded with
the tokenizer's special tokens (e.g. a leading bos) and followed by its eos
when it has one. The embedded byte corpora keep no document boundaries: a
split is one text, read in corpus order from moejax.data.builders (TFDS
stores the 1024-byte records shuffled), decoded as UTF-8 and tokenized in
chunks that end at a line.

Windows are cut like moejax.data.sources.ByteWindows: window i holds tokens
[i L, i L + L] (L = seq_len), so consecutive windows share one token and every
token is a target once. A target that starts a document is masked out: its
context is another document.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from moejax.data.sources import lm_example

_CHUNK_CHARS = 1 << 20      # byte corpora are encoded in ~1M-character chunks
_ENCODE_BATCH = 1024        # documents per encode_batch call
_VERSION = 1                # bump when the stream layout changes


class TokenWindows(Sequence):
  """Next-token examples cut from a token stream; see the module docstring.

  tokens: [n] int32; doc_start: [n] bool, True where a document begins.
  """

  def __init__(self, tokens: np.ndarray, doc_start: np.ndarray, seq_len: int):
    self._tokens, self._doc_start, self._seq_len = tokens, doc_start, seq_len
    self._count = max((len(tokens) - 1) // seq_len, 0)

  def __len__(self) -> int:
    return self._count

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self._count:
      raise IndexError(index)
    start = int(index) * self._seq_len
    stop = start + self._seq_len + 1
    example = lm_example(np.asarray(self._tokens[start:stop], np.int32), self._seq_len)
    example["mask"] = example["mask"] * ~np.asarray(self._doc_start[start + 1:stop])
    return example


def _tokenizer_digest(tokenizer) -> str:
  digest = hashlib.sha256()
  for name in sorted(os.listdir(tokenizer.folder)):
    if name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
      with open(os.path.join(tokenizer.folder, name), "rb") as f:
        digest.update(name.encode() + b"\0" + f.read() + b"\0")
  return digest.hexdigest()


def _line_chunks(text: str) -> Iterable[str]:
  start = 0
  while start < len(text):
    end = text.find("\n", start + _CHUNK_CHARS)
    end = len(text) if end < 0 else end + 1
    yield text[start:end]
    start = end


def _encode_stream(tokenizer, documents: Iterable[str], separate: bool
                   ) -> Tuple[np.ndarray, np.ndarray, int]:
  """(tokens, doc_start, UTF-8 bytes encoded) of `documents`; separate=False
  joins them into one document (chunks of one text)."""
  eos = tokenizer.token_id("eos_token") if separate else None
  pieces: List[np.ndarray] = []
  starts: List[np.ndarray] = []
  num_bytes = 0
  batch: List[str] = []

  def flush():
    encodings = tokenizer.backend.encode_batch(batch, add_special_tokens=separate)
    for encoding in encodings:
      ids = np.asarray(encoding.ids + ([eos] if eos is not None else []), np.int32)
      start = np.zeros(len(ids), bool)
      if separate and len(ids):
        start[0] = True
      pieces.append(ids)
      starts.append(start)
    batch.clear()

  for text in documents:
    num_bytes += len(text.encode("utf-8"))
    batch.append(text)
    if len(batch) == _ENCODE_BATCH:
      flush()
  if batch:
    flush()
  if not pieces:
    return np.zeros(0, np.int32), np.zeros(0, bool), 0
  return np.concatenate(pieces), np.concatenate(starts), num_bytes


def _texts(source, text_key: str) -> Iterable[str]:
  for i in range(len(source)):
    text = source[i][text_key]
    yield text if isinstance(text, str) else bytes(text).decode("utf-8", "replace")


def tokenized_split(source, *, dataset: str, split: str, text_key: str,
                    byte_corpus: Optional[Callable[[], bytes]], tokenizer, data_dir: str,
                    content_id: str = "") -> Tuple[np.ndarray, np.ndarray, float]:
  """(tokens [n] int32, doc_start [n] bool, bytes per token) of one split,
  from the cache or tokenized now (and cached, atomically). `source`: the
  TFDS split (documents under text_key); `byte_corpus`: () -> the split's
  bytes, for the embedded byte corpora (then `source` is not read)."""
  key = hashlib.sha256(json.dumps(
      [_VERSION, dataset, split, text_key, byte_corpus is not None, content_id,
       _tokenizer_digest(tokenizer)]).encode()).hexdigest()[:16]
  folder = os.path.join(data_dir, "moejax_tokenized", f"{dataset.replace('/', '_')}-"
                        f"{split.replace('/', '_').replace('[', '_').replace(']', '_')}-{key}")
  if not os.path.isdir(folder):
    if byte_corpus is not None:
      tokens, doc_start, num_bytes = _encode_stream(
          tokenizer, _line_chunks(byte_corpus().decode("utf-8", "replace")), separate=False)
    else:
      tokens, doc_start, num_bytes = _encode_stream(tokenizer, _texts(source, text_key),
                                                    separate=True)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".partial-", dir=os.path.dirname(folder))
    np.save(os.path.join(staging, "tokens.npy"), tokens)
    np.save(os.path.join(staging, "doc_start.npy"), doc_start)
    with open(os.path.join(staging, "info.json"), "w") as f:
      json.dump({"bytes": num_bytes, "tokens": int(len(tokens)), "tokenizer": tokenizer.folder},
                f)
    try:
      os.rename(staging, folder)
    except OSError:  # another process cached it first
      shutil.rmtree(staging, ignore_errors=True)
  with open(os.path.join(folder, "info.json")) as f:
    info = json.load(f)
  tokens = np.load(os.path.join(folder, "tokens.npy"), mmap_mode="r")
  doc_start = np.load(os.path.join(folder, "doc_start.npy"), mmap_mode="r")
  return tokens, doc_start, info["bytes"] / max(info["tokens"], 1)
