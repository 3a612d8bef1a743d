"""Datasets and long-tailed subsets: ``get_dataset`` and ``long_tailed_counts``."""
from .dataset import ImageDataset, dataset_from_config, get_dataset, list_datasets, to_float
from .long_tailed import (PROFILES, dataset_minority_classes, long_tailed_counts, long_tailed_indices,
                          minority_classes)
from .sources import DatasetNotFoundError, read_idx

__all__ = ["ImageDataset", "dataset_from_config", "get_dataset", "list_datasets", "to_float", "PROFILES",
           "long_tailed_counts", "long_tailed_indices", "minority_classes", "dataset_minority_classes",
           "DatasetNotFoundError", "read_idx"]
