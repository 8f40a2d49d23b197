"""MTA-CLIP (ECCV 2024) and a Mask2Former semantic baseline for Detectron2.

Importing the package registers its models, backbones and datasets.
"""

import warnings

# Detectron2 / fvcore call torch.jit.script at import time; torch >= 2.10 answers with a
# FutureWarning on every command. It is about their code, not this project's: hide that one warning.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace` is deprecated", category=FutureWarning)

from . import data, evaluation, modeling  # noqa: E402,F401  (registration; after the warning filters)
from .config import add_mtaclip_config  # noqa: E402
from .data import register_sem_seg_dataset  # noqa: E402
from .predictor import Predictor  # noqa: E402

__all__ = ["add_mtaclip_config", "register_sem_seg_dataset", "Predictor"]
