"""Data: embedded TFDS builders (array_record) and grain pipelines."""

from moejax.data.config import DataConfig, data_config_from_mapping
from moejax.data.pipeline import DataError, Datasets, make_datasets, unigram_cross_entropy

__all__ = ["DataConfig", "DataError", "Datasets", "data_config_from_mapping", "make_datasets",
           "unigram_cross_entropy"]
