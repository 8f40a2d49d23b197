"""MTA-CLIP (ECCV 2024) and a Mask2Former semantic baseline for Detectron2.

Importing the package registers its models, backbones and datasets.
"""
from . import data, evaluation, modeling  # noqa: F401  (registration)
from .config import add_mtaclip_config
from .data import register_sem_seg_dataset
from .predictor import Predictor

__all__ = ["add_mtaclip_config", "register_sem_seg_dataset", "Predictor"]
