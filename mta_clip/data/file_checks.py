"""Dataset files that cannot be used: one clear error naming the file, in training, evaluation and
validation alike.

* ``oriented_size``: an image's (height, width) as it is loaded, i.e. after its EXIF orientation
  (Detectron2's ``read_image`` rotates JPEGs that carry one); used by dataset loading and the
  validator so that both agree with the loader.
* ``check_label_values``: label values outside [0, C) that are not the ignore value.
* ``checked_label_loader``: the evaluator's label reader with the training checks plus the size of
  the label against its image.
* ``ExplainReadErrors``: wraps a dataset mapper; an unreadable or truncated image becomes an
  OSError naming the file and ``tools/validate_dataset.py``.
"""

from typing import Callable, Dict, Tuple

import numpy as np
from PIL import Image

__all__ = [
    "EXIF_ORIENTATION_TAG",
    "ExplainReadErrors",
    "check_label_values",
    "checked_label_loader",
    "exif_orientation",
    "oriented_size",
]

EXIF_ORIENTATION_TAG = 274
VALIDATE_HINT = "run `python tools/validate_dataset.py` on the dataset to list every unusable file"


def exif_orientation(image: Image.Image) -> int:
    """EXIF orientation (1..8; 1 = as stored) of an opened PIL image."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except (OSError, ValueError, SyntaxError):  # a broken EXIF block: the loader ignores it too
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def oriented_size(image: Image.Image) -> Tuple[int, int]:
    """(height, width) after the EXIF orientation (5..8 swap the sides)."""
    width, height = image.size
    return (width, height) if exif_orientation(image) in (5, 6, 7, 8) else (height, width)


def check_label_values(label: np.ndarray, label_file: str, num_classes: int, ignore_label: int) -> None:
    """ValueError naming ``label_file`` when a value is outside [0, num_classes) and not the ignore value."""
    values = np.unique(label)
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_label)]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:20]) + (" ..." if bad.size > 20 else "")
        raise ValueError(
            f"Label file {label_file}: label values [{shown}] are outside [0, {num_classes}) "
            f"(MODEL.SEM_SEG_HEAD.NUM_CLASSES) and are not the ignore value {ignore_label} "
            f"(MODEL.SEM_SEG_HEAD.IGNORE_VALUE); {VALIDATE_HINT}"
        )


def checked_label_loader(records: Dict[str, Dict], num_classes: int, ignore_label: int) -> Callable:
    """``sem_seg_loading_fn`` for Detectron2's ``SemSegEvaluator``: reads a label map and checks it.

    Args:
        records: label file -> its dataset dict (``file_name``, ``height``, ``width``).
    """

    def load(label_file: str, dtype=int) -> np.ndarray:
        try:
            with Image.open(label_file) as im:
                label = np.array(im, dtype=dtype)
        except (OSError, ValueError, SyntaxError) as e:
            raise OSError(f"cannot read label file {label_file}: {e}; {VALIDATE_HINT}") from e
        if label.ndim != 2:
            raise ValueError(f"Label file {label_file}: expected a single-channel label map, got shape {label.shape}")
        check_label_values(label, label_file, num_classes, ignore_label)
        rec = records.get(label_file, {})
        if "height" in rec and "width" in rec and label.shape != (rec["height"], rec["width"]):
            raise ValueError(
                f"Label file {label_file} has size {label.shape} (H, W) but its image {rec.get('file_name')} has "
                f"{(rec['height'], rec['width'])}; {VALIDATE_HINT}"
            )
        return label

    return load


class ExplainReadErrors:
    """Calls ``mapper``; an image or label that cannot be read (unreadable, truncated) becomes an
    OSError naming the dataset dict's files and the validation tool."""

    def __init__(self, mapper: Callable):
        self.mapper = mapper

    def __call__(self, dataset_dict: Dict):
        try:
            return self.mapper(dataset_dict)
        except (OSError, SyntaxError) as e:
            if VALIDATE_HINT in str(e):
                raise
            files = dataset_dict.get("file_name", "<no file_name>")
            if dataset_dict.get("sem_seg_file_name"):
                files += f" (label {dataset_dict['sem_seg_file_name']})"
            raise OSError(f"cannot read {files}: {e}; {VALIDATE_HINT}") from e

    def __repr__(self) -> str:
        return f"ExplainReadErrors({self.mapper!r})"
