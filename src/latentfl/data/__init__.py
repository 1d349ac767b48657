"""Datasets for latentfl: loaders behind one spec string, channel statistics, partitioners.

``load_dataset("imagefolder:PATH" | "cifar10:PATH" | "npz:PATH" | "builtin:cifar10-mini")``
returns a ``Dataset`` of uint8 ``ImageSet`` splits; ``to_tensors`` normalises one for training;
``partition`` splits labels among federated clients.
"""

from latentfl.data.datasets import (
    BUILTIN_DATASETS,
    SPEC_SCHEMES,
    Dataset,
    ImageSet,
    channel_stats,
    evaluation_tensors,
    load_dataset,
    to_tensors,
)
from latentfl.data.partition import (
    DIRICHLET_SCHEMES,
    PARTITION_SCHEMES,
    PartitionConfig,
    class_counts,
    partition,
)

__all__ = [
    "BUILTIN_DATASETS",
    "DIRICHLET_SCHEMES",
    "PARTITION_SCHEMES",
    "PartitionConfig",
    "SPEC_SCHEMES",
    "Dataset",
    "ImageSet",
    "channel_stats",
    "class_counts",
    "load_dataset",
    "partition",
    "evaluation_tensors",
    "to_tensors",
]
