"""TFDS builders for the embedded datasets (no download, no TensorFlow).

Both write array_record files, which grain reads by random access:
  pydoc_bytes:    Python's own documentation (pydoc_data.topics, ~465 KB of
                  English) as a byte stream cut into fixed 1024-byte records.
                  Splits: train (first 95% of records), validation (the rest).
  stdlib_bytes:   the source of Python's standard library (*.py under the
                  stdlib folder, without site-packages and the test suites;
                  ~12 MB on CPython 3.11), split by file: a file goes to test
                  if sha256(its relative path) % 20 == 0, to validation if it
                  is 1, else to train (~5% / 5% / 90%, stable when files come
                  and go). Each split is its files' bytes in sorted path order,
                  separated by a blank line, cut into 1024-byte records. The
                  stdlib differs between Python versions: the SHA-256 of the
                  whole corpus is stored in the dataset info (metadata
                  'content_sha256') and in every checkpoint, and a run resumed
                  on a copy with another digest is refused.
  sklearn_digits: the UCI 8x8 handwritten digits that scikit-learn bundles
                  (1797 images, intensities 0..16), shipped here as digits.npz
                  (CC BY 4.0, see DIGITS_LICENSE.md) so that scikit-learn is not
                  a dependency; shuffled once with a fixed seed.
                  Splits: train (1500), test (297).
"""

from __future__ import annotations

import hashlib
import pathlib
import platform
import sysconfig
from typing import Dict, Tuple

import numpy as np
import tensorflow_datasets as tfds

PYDOC_RECORD_BYTES = 1024
RECORD_BYTES = PYDOC_RECORD_BYTES
# Folders of the stdlib that are not the library itself.
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def pydoc_corpus() -> bytes:
  """The text of every pydoc topic, in sorted topic order, as UTF-8 bytes."""
  from pydoc_data.topics import topics  # ships with CPython
  return "\n\n".join(topics[name] for name in sorted(topics)).encode("utf-8")


def _records(data: bytes) -> np.ndarray:
  """[n, RECORD_BYTES] uint8 records of a byte stream (the tail is dropped)."""
  array = np.frombuffer(data, np.uint8)
  return array[: len(array) // RECORD_BYTES * RECORD_BYTES].reshape(-1, RECORD_BYTES)


class _EmbeddedInfo(tfds.core.DatasetInfo):
  """DatasetInfo of a dataset built here, never published to the tfds-data
  bucket: TFDS would look it up there on every construction of an unprepared
  builder, and each lookup leaves an empty /tmp/tmp*tfds folder behind."""

  def initialize_from_bucket(self) -> None:
    pass


class _ByteRecords:
  """What the byte-corpus builders share: the feature and the examples (a
  mixin, so TFDS does not register it as a dataset)."""

  MODALITY = "bytes"

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def _byte_info(self, description: str, **info) -> tfds.core.DatasetInfo:
    return _EmbeddedInfo(
        builder=self, description=description,
        features=tfds.features.FeaturesDict({
            "bytes": tfds.features.Tensor(shape=(RECORD_BYTES,), dtype=np.uint8)}), **info)

  def _generate_examples(self, records):
    for i, record in enumerate(records):
      yield i, {"bytes": record}


class PydocBytes(_ByteRecords, tfds.core.GeneratorBasedBuilder):
  """Byte-level LM corpus from pydoc_data.topics (records of 1024 bytes)."""

  def _info(self):
    return self._byte_info("Python's pydoc topics as 1024-byte records of UTF-8 bytes.")

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(records)
            for split, records in pydoc_split_records().items()}


def pydoc_split_records() -> Dict[str, np.ndarray]:
  records = _records(pydoc_corpus())
  num_train = int(round(0.95 * len(records)))
  return {"train": records[:num_train], "validation": records[num_train:]}


def stdlib_corpus() -> Tuple[Dict[str, bytes], str]:
  """({split: bytes}, sha256 hex of every (path, content) in order): see the
  module docstring for the file selection and split rule."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  files = sorted(p for p in root.rglob("*.py")
                 if not set(p.relative_to(root).parts[:-1]) & _STDLIB_SKIP)
  parts: Dict[str, list] = {"train": [], "validation": [], "test": []}
  digest = hashlib.sha256()
  for path in files:
    name = path.relative_to(root).as_posix()
    content = path.read_bytes()
    digest.update(name.encode() + b"\0" + content + b"\0")
    bucket = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 20
    split = "test" if bucket == 0 else "validation" if bucket == 1 else "train"
    parts[split].append(content)
  return {split: b"\n\n".join(chunks) for split, chunks in parts.items()}, digest.hexdigest()


class StdlibBytes(_ByteRecords, tfds.core.GeneratorBasedBuilder):
  """Byte-level LM corpus from the Python standard library's source."""

  def _info(self):
    # The metadata is filled in while the splits are generated and read back
    # from the prepared folder afterwards (reading the stdlib takes seconds).
    return self._byte_info(
        f"Python {platform.python_version()} standard library source (*.py) as "
        f"{RECORD_BYTES}-byte records of bytes; split by file.", metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager
    splits, digest = stdlib_corpus()
    self.info.metadata.update(content_sha256=digest, python_version=platform.python_version())
    return {name: self._generate_examples(_records(data)) for name, data in splits.items()}


def byte_corpus_split(name: str, split: str) -> bytes:
  """The bytes of a byte corpus's split in corpus order: what its records
  hold, before TFDS stores them in its own (shuffled) order. KeyError for a
  split the corpus does not have."""
  if name == PydocBytes.name:
    return pydoc_split_records()[split].tobytes()
  if name == StdlibBytes.name:
    return _records(stdlib_corpus()[0][split]).tobytes()
  raise KeyError(name)


DIGITS_FILE = pathlib.Path(__file__).with_name("digits.npz")
DIGITS_SHA256 = "87ff0c9e40dc7e2c0e34e7257799c2e3f3aec1a016363bb11cad869ec428a826"


def digits_arrays() -> Tuple[np.ndarray, np.ndarray]:
  """The shipped digits: images uint8 [1797, 8, 8], labels uint8 [1797],
  checked against their SHA-256 (a damaged file is refused, not trained on)."""
  with np.load(DIGITS_FILE) as z:
    images, labels = z["images"], z["labels"]
  digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
  if digest != DIGITS_SHA256 or images.shape != (1797, 8, 8) or labels.shape != (1797,):
    raise ValueError(f"{DIGITS_FILE} is damaged (sha256 {digest[:12]}…, expected "
                     f"{DIGITS_SHA256[:12]}…): reinstall moejax")
  return images, labels


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """The 8x8 digits (digits.npz) as uint8 images [8, 8, 1] + labels."""

  MODALITY = "images"
  PIXEL_MAX = 16

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def _info(self):
    return _EmbeddedInfo(
        builder=self,
        description="UCI optical digits (as bundled with scikit-learn); pixel values 0..16.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    images, labels = digits_arrays()
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[order][..., None], labels[order]
    return {"train": self._generate_examples(images[:1500], labels[:1500]),
            "test": self._generate_examples(images[1500:], labels[1500:])}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": int(label)}


# The registry of embedded datasets: name -> builder. A builder's MODALITY says
# how the pipeline reads it: 'bytes' (fixed-length byte records, read as byte
# windows by kind='lm') or 'images' (image + label, kind='vit'; pixel values
# 0..PIXEL_MAX).
EMBEDDED = {builder.name: builder for builder in (PydocBytes, StdlibBytes, SklearnDigits)}
BYTE_CORPORA = tuple(name for name, b in EMBEDDED.items() if b.MODALITY == "bytes")
IMAGE_DATASETS = tuple(name for name, b in EMBEDDED.items() if b.MODALITY == "images")
