"""Evaluation: per-class semantic-segmentation tables, test-time augmentation, best checkpoint."""

from .best_checkpoint import BestCheckpointHook, build_best_checkpoint_hook
from .periodic_eval import PeriodicEvalHook
from .sem_seg_evaluation import PerClassSemSegEvaluator, format_per_class_table, per_class_metrics
from .test_time_augmentation import SemSegTTA, build_test_model, normalize_scores, sliding_windows

__all__ = [
    "BestCheckpointHook",
    "PerClassSemSegEvaluator",
    "PeriodicEvalHook",
    "SemSegTTA",
    "build_best_checkpoint_hook",
    "build_test_model",
    "format_per_class_table",
    "normalize_scores",
    "per_class_metrics",
    "sliding_windows",
]
