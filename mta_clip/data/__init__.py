"""Data: the training mapper and dataset registration (importing this registers the datasets)."""

from . import datasets, toy  # noqa: F401  (register ade20k_150_* / cityscapes_19_* and toy_sem_seg_{train,val})
from .dataset_mapper import ColorAugSSD, PhotometricDistortTransform, SemanticMaskFormerMapper
from .datasets import register_sem_seg_dataset

__all__ = [
    "ColorAugSSD",
    "PhotometricDistortTransform",
    "SemanticMaskFormerMapper",
    "register_sem_seg_dataset",
    "toy",
]
