"""Data: the training mapper and dataset registration (importing this registers the datasets)."""
from . import toy  # registers toy_sem_seg_{train,val}
from . import datasets  # noqa: F401  (registers ade20k_150_* / cityscapes_19_*)
from .datasets import register_sem_seg_dataset
from .dataset_mapper import ColorAugSSD, PhotometricDistortTransform, SemanticMaskFormerMapper

__all__ = [
    "ColorAugSSD",
    "PhotometricDistortTransform",
    "SemanticMaskFormerMapper",
    "register_sem_seg_dataset",
    "toy",
]
