"""The class count C of a config follows its training data: ``MODEL.SEM_SEG_HEAD.NUM_CLASSES``.

``NUM_CLASSES: 0`` (the default) takes C from the class list of the ``DATASETS.TRAIN`` datasets; a
value set in a config must equal that count. Evaluating on a dataset with another class count is
an error too (``check_eval_dataset``): the numbers would be meaningless.
"""

import logging
from typing import Dict, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["check_eval_dataset", "dataset_class_count", "resolve_num_classes"]

logger = logging.getLogger(__name__)


def dataset_class_count(name: str) -> Optional[int]:
    """Number of ``stuff_classes`` of a registered dataset; None when it is unknown."""
    if name not in DatasetCatalog.list() and name not in MetadataCatalog.list():
        return None
    classes = MetadataCatalog.get(name).get("stuff_classes", None)
    return None if classes is None else len(classes)


def resolve_num_classes(cfg) -> None:
    """Sets ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` (when 0) from the training datasets, in place.

    Raises:
        ValueError: the training datasets disagree, a set value differs from their class count
            (message names both numbers), or the value is 0 and no training dataset has a class list.
    Without DATASETS.TRAIN the test datasets are followed; without any dataset nothing is done.
    """
    split = "DATASETS.TRAIN" if cfg.DATASETS.TRAIN else "DATASETS.TEST"
    names = list(cfg.DATASETS.TRAIN) or list(cfg.DATASETS.TEST)
    if not names:
        return  # a config without datasets (defaults, analysis): nothing to follow or check
    counts: Dict[str, int] = {}
    for name in names:
        n = dataset_class_count(name)
        if n is not None:
            counts[name] = n
    if len(set(counts.values())) > 1:
        raise ValueError(f"the {split} datasets have different class counts {counts}; use one class list")
    key = "MODEL.SEM_SEG_HEAD.NUM_CLASSES"
    value = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if counts:
        name, n = next(iter(counts.items()))
        if value == 0:
            cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = n
            logger.info("%s = %d, the class count of training dataset '%s'", key, n, name)
        elif value != n:
            raise ValueError(
                f"{key} is {value} but {'training ' if split == 'DATASETS.TRAIN' else ''}dataset '{name}' has {n} "
                f"classes; remove the key (it then follows the training data) or set it to {n}"
            )
    elif value == 0:
        raise ValueError(
            f"{key} is 0 (= take the class count from the training data) but no dataset of {split} "
            f"{tuple(names)} is registered with a class list: pass --dataset-file (or list the file in "
            f"DATASETS.FILES), or set {key}"
        )
    elif value < 0:
        raise ValueError(f"{key} must be > 0, got {value}")


def check_eval_dataset(cfg, dataset_name: str) -> None:
    """A model with C classes is evaluated only on datasets with C classes (error naming both)."""
    n = dataset_class_count(dataset_name)
    value = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if n is not None and n != value:
        raise ValueError(
            f"cannot evaluate a model with {value} classes (MODEL.SEM_SEG_HEAD.NUM_CLASSES) on dataset "
            f"'{dataset_name}', which has {n} classes"
        )
