"""TFDS builders for the embedded datasets (no download, no TensorFlow).

Both write array_record files, which grain reads by random access:
  pydoc_bytes:    Python's own documentation (pydoc_data.topics, ~465 KB of
                  English) as a byte stream cut into fixed 1024-byte records.
                  Splits: train (first 95% of records), validation (the rest).
  sklearn_digits: scikit-learn's bundled 8x8 handwritten digits (1797 images,
                  intensities 0..16), shuffled once with a fixed seed.
                  Splits: train (1500), test (297).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

PYDOC_RECORD_BYTES = 1024


def pydoc_corpus() -> bytes:
  """The text of every pydoc topic, in sorted topic order, as UTF-8 bytes."""
  from pydoc_data.topics import topics  # ships with CPython
  return "\n\n".join(topics[name] for name in sorted(topics)).encode("utf-8")


class PydocBytes(tfds.core.GeneratorBasedBuilder):
  """Byte-level LM corpus from pydoc_data.topics (records of 1024 bytes)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description="Python's pydoc topics as 1024-byte records of UTF-8 bytes.",
        features=tfds.features.FeaturesDict({
            "bytes": tfds.features.Tensor(shape=(PYDOC_RECORD_BYTES,), dtype=np.uint8)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    data = np.frombuffer(pydoc_corpus(), np.uint8)
    records = data[: len(data) // PYDOC_RECORD_BYTES * PYDOC_RECORD_BYTES]
    records = records.reshape(-1, PYDOC_RECORD_BYTES)
    num_train = int(round(0.95 * len(records)))
    return {"train": self._generate_examples(records[:num_train]),
            "validation": self._generate_examples(records[num_train:])}

  def _generate_examples(self, records):
    for i, record in enumerate(records):
      yield i, {"bytes": record}


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's bundled 8x8 digits as uint8 images [8, 8, 1] + labels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description="UCI optical digits bundled with scikit-learn; pixel values 0..16.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    from sklearn.datasets import load_digits  # data file ships inside scikit-learn
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    images = digits.images[order].astype(np.uint8)[..., None]
    labels = digits.target[order]
    return {"train": self._generate_examples(images[:1500], labels[:1500]),
            "test": self._generate_examples(images[1500:], labels[1500:])}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": int(label)}


EMBEDDED = {"pydoc_bytes": PydocBytes, "sklearn_digits": SklearnDigits}
