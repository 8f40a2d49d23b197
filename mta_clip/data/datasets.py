"""ADE20k-150 / Cityscapes-19 registration and ``register_sem_seg_dataset`` for a user's own data.

Importing this module registers (names chosen not to collide with Detectron2's own
``ade20k_sem_seg_*`` / ``cityscapes_fine_sem_seg_*``, which use other metadata):

==============================  ===============================================================
``ade20k_150_sem_seg_train``    ``ADEChallengeData2016/images/training/*.jpg`` +
                                ``ADEChallengeData2016/annotations_detectron2/training/*.png``
``ade20k_150_sem_seg_val``      same with ``validation``
``cityscapes_19_sem_seg_train`` ``cityscapes/leftImg8bit/train/<city>/*_leftImg8bit.png`` +
                                ``cityscapes/gtFine/train/<city>/*_gtFine_labelTrainIds.png``
``cityscapes_19_sem_seg_val``   same with ``val``
==============================  ===============================================================

Paths are relative to ``$DETECTRON2_DATASETS`` (default ``datasets``), read when the dataset is
loaded, not at import. The label maps are written by ``datasets/prepare_ade20k_sem_seg.py`` and
``datasets/prepare_cityscapes_sem_seg.py`` (values = class index, 255 = ignore).

Dataset dicts: ``file_name``, ``sem_seg_file_name``, ``height``, ``width``. Metadata:
``stuff_classes`` (display), ``prompt_classes`` (short names for the CLIP prompt slot),
``stuff_colors`` (RGB), ``ignore_label``, ``evaluator_type="sem_seg"``, ``image_root``,
``sem_seg_root``.
"""

import inspect
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from .class_names import (
    ADE20K_CLASSES,
    ADE20K_COLORS,
    ADE20K_PROMPT_CLASSES,
    CITYSCAPES_CLASSES,
    CITYSCAPES_COLORS,
    CITYSCAPES_PROMPT_CLASSES,
)
from .file_checks import oriented_size

__all__ = [
    "ADE20K_SPLITS",
    "CITYSCAPES_SPLITS",
    "datasets_root",
    "default_palette",
    "load_dataset_dicts",
    "load_sem_seg_pairs",
    "register_sem_seg_dataset",
]

logger = logging.getLogger(__name__)

IGNORE_LABEL = 255

# dataset name -> split folder name
ADE20K_SPLITS = {"ade20k_150_sem_seg_train": "training", "ade20k_150_sem_seg_val": "validation"}
CITYSCAPES_SPLITS = {"cityscapes_19_sem_seg_train": "train", "cityscapes_19_sem_seg_val": "val"}

ADE20K_DIRNAME = "ADEChallengeData2016"
ADE20K_LABEL_DIRNAME = "annotations_detectron2"
CITYSCAPES_DIRNAME = "cityscapes"
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
CITYSCAPES_LABEL_SUFFIX = "_gtFine_labelTrainIds.png"


def load_dataset_dicts(name: str, tolerate_unreadable: bool = False) -> List[Dict]:
    """``DatasetCatalog.get(name)``; with ``tolerate_unreadable``, a dataset registered by this
    module keeps images whose header cannot be read (records without ``height`` / ``width``)
    instead of raising. Datasets registered elsewhere load as Detectron2 loads them."""
    loader = DatasetCatalog[name] if name in DatasetCatalog.list() else None
    if tolerate_unreadable and loader is not None and "tolerate_unreadable" in inspect.signature(loader).parameters:
        return loader(tolerate_unreadable=True)
    return DatasetCatalog.get(name)


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS`` (``datasets`` when unset), user-expanded; read at every call."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def default_palette(num_classes: int) -> List[Tuple[int, int, int]]:
    """``num_classes`` distinct, deterministic RGB colors (``mta_clip.visualization.readable_palette``)."""
    from ..visualization import readable_palette

    return readable_palette(num_classes)


def _collect(root: str, suffix: str) -> Dict[str, str]:
    """Maps ``relative path without suffix`` -> full path for every file under ``root``."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fname in sorted(filenames):
            if fname.startswith(".") or not fname.endswith(suffix):
                continue  # hidden files include the temporary files of interrupted writes
            full = os.path.join(dirpath, fname)
            rel = os.path.relpath(full, root)
            found[rel[: -len(suffix)]] = full
    return found


def _examples(keys: Sequence[str], n: int = 3) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_sem_seg_pairs(
    image_root: str,
    label_root: str,
    image_suffix: str = ".jpg",
    label_suffix: str = ".png",
    *,
    dataset_name: str = "",
    hint: str = "",
    tolerate_unreadable: bool = False,
) -> List[Dict]:
    """Pairs images and label maps by their path relative to the root, minus the suffix.

    Files are searched recursively; ``<image_root>/a/b_leftImg8bit.png`` pairs with
    ``<label_root>/a/b_gtFine_labelTrainIds.png`` for those suffixes. Images without a label (and
    labels without an image) are left out with a warning. ``height`` / ``width`` come from the
    image header; an unreadable header raises OSError, or with ``tolerate_unreadable`` leaves the
    record without them (tools/validate_dataset.py reports such images instead of stopping).

    Returns:
        list of dicts with ``file_name``, ``sem_seg_file_name``, ``height``, ``width``, sorted.
    Raises:
        FileNotFoundError: a root is missing or no pair is found (message names the paths and
            ``hint``, e.g. the preparation script to run).
    """
    what = f"Dataset '{dataset_name}': " if dataset_name else ""
    extra = f" {hint}" if hint else ""
    for kind, root in (("image", image_root), ("label", label_root)):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{what}{kind} folder '{root}' does not exist.{extra}")
    images = _collect(image_root, image_suffix)
    labels = _collect(label_root, label_suffix)
    keys = sorted(set(images) & set(labels))
    if not keys:
        raise FileNotFoundError(
            f"{what}no image '*{image_suffix}' under '{image_root}' has a label "
            f"'*{label_suffix}' under '{label_root}' ({len(images)} images, {len(labels)} labels "
            f"found; they are paired by relative path minus the suffix).{extra}"
        )
    no_label = set(images) - set(labels)
    no_image = set(labels) - set(images)
    if no_label:
        logger.warning(
            "%s%d image(s) under %s have no label and are left out: %s",
            what,
            len(no_label),
            image_root,
            _examples(list(no_label)),
        )
    if no_image:
        logger.warning(
            "%s%d label(s) under %s have no image and are left out: %s",
            what,
            len(no_image),
            label_root,
            _examples(list(no_image)),
        )
    records = []
    for key in keys:
        record = {"file_name": images[key], "sem_seg_file_name": labels[key]}
        try:
            with Image.open(images[key]) as im:
                height, width = oriented_size(im)  # what detectron2's read_image returns (EXIF applied)
            record.update(height=int(height), width=int(width))
        except (OSError, ValueError) as e:
            if not tolerate_unreadable:
                raise OSError(
                    f"{what}cannot read the header of image '{images[key]}': {e} "
                    "(tools/validate_dataset.py lists every problem of a dataset)"
                ) from e
        records.append(record)
    logger.info("%sloaded %d image/label pairs from %s", what, len(records), image_root)
    return records


def _check_classes(
    name: str,
    class_names: Sequence[str],
    prompt_names: Optional[Sequence[str]],
    colors: Optional[Sequence[Sequence[int]]],
    ignore_label: int,
) -> Tuple[List[str], List[str], List[Tuple[int, int, int]]]:
    class_names = [str(c) for c in class_names]
    if not class_names:
        raise ValueError(f"Dataset '{name}': class_names is empty.")
    dup = sorted({c for c in class_names if class_names.count(c) > 1})
    if dup:
        raise ValueError(f"Dataset '{name}': duplicate class names {dup} (display names must differ).")
    if prompt_names is None:
        prompt_names = list(class_names)
    prompt_names = [str(c) for c in prompt_names]
    if len(prompt_names) != len(class_names):
        raise ValueError(f"Dataset '{name}': {len(prompt_names)} prompt names for {len(class_names)} classes.")
    if colors is None:
        colors = default_palette(len(class_names))
    colors = [tuple(int(v) for v in c) for c in colors]
    if len(colors) != len(class_names) or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in colors):
        raise ValueError(f"Dataset '{name}': colors must be {len(class_names)} RGB triples in 0..255, got {colors}.")
    if not isinstance(ignore_label, int) or not 0 <= ignore_label <= 65535:
        raise ValueError(f"Dataset '{name}': ignore_label must be an int in 0..65535, got {ignore_label!r}.")
    if ignore_label < len(class_names):
        raise ValueError(
            f"Dataset '{name}': ignore_label {ignore_label} is a class index "
            f"(there are {len(class_names)} classes, labels 0..{len(class_names) - 1})."
        )
    return class_names, prompt_names, colors


def _set_metadata(name: str, image_root: str, label_root: str, fields: Dict) -> None:
    """(Re)sets the metadata of ``name``; replaces it when the roots changed."""
    meta = MetadataCatalog.get(name)
    if getattr(meta, "image_root", None) not in (None, image_root) or getattr(meta, "sem_seg_root", None) not in (
        None,
        label_root,
    ):
        MetadataCatalog.remove(name)
        meta = MetadataCatalog.get(name)
    meta.set(image_root=image_root, sem_seg_root=label_root, **fields)


def _register(
    name: str,
    roots: Callable[[], Tuple[str, str]],
    class_names: Sequence[str],
    prompt_names: Optional[Sequence[str]],
    colors: Optional[Sequence[Sequence[int]]],
    ignore_label: int,
    image_suffix: str,
    label_suffix: str,
    hint: Callable[[], str],
    overwrite: bool,
    evaluator_type: str = "sem_seg",
) -> None:
    class_names, prompt_names, colors = _check_classes(name, class_names, prompt_names, colors, ignore_label)
    if name in DatasetCatalog.list():
        if not overwrite:
            raise ValueError(f"Dataset '{name}' is already registered; pass overwrite=True to replace it.")
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    fields = dict(
        stuff_classes=class_names,
        prompt_classes=prompt_names,
        stuff_colors=colors,
        ignore_label=ignore_label,
        evaluator_type=evaluator_type,
    )

    def load(tolerate_unreadable: bool = False) -> List[Dict]:
        image_root, label_root = roots()  # resolved now, so $DETECTRON2_DATASETS may change
        _set_metadata(name, image_root, label_root, fields)
        return load_sem_seg_pairs(
            image_root,
            label_root,
            image_suffix,
            label_suffix,
            dataset_name=name,
            hint=hint(),
            tolerate_unreadable=tolerate_unreadable,
        )

    DatasetCatalog.register(name, load)
    image_root, label_root = roots()
    _set_metadata(name, image_root, label_root, fields)


def register_sem_seg_dataset(
    name: str,
    image_root: str,
    label_root: str,
    class_names: Sequence[str],
    *,
    prompt_names: Optional[Sequence[str]] = None,
    colors: Optional[Sequence[Sequence[int]]] = None,
    ignore_label: int = IGNORE_LABEL,
    image_suffix: str = ".jpg",
    label_suffix: str = ".png",
    overwrite: bool = False,
) -> None:
    """Registers a user's semantic-segmentation dataset with Detectron2's catalogs.

    Args:
        name: dataset name for ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
        image_root / label_root: folders searched recursively; an image and a label pair up when
            their relative paths without ``image_suffix`` / ``label_suffix`` are equal.
        class_names: display names, label value i = ``class_names[i]``.
        prompt_names: short names for the CLIP prompt slot (default: ``class_names``).
        colors: RGB triples (default: ``default_palette``).
        ignore_label: label value ignored by training and evaluation (not a class index).
        overwrite: replace an existing registration of ``name`` instead of raising.
    """
    image_root = os.path.abspath(os.path.expanduser(image_root))
    label_root = os.path.abspath(os.path.expanduser(label_root))
    _register(
        name,
        lambda: (image_root, label_root),
        class_names,
        prompt_names,
        colors,
        ignore_label,
        image_suffix,
        label_suffix,
        hint=lambda: "Check the paths given to register_sem_seg_dataset.",
        overwrite=overwrite,
    )


def _ade20k_roots(split: str) -> Tuple[str, str]:
    base = os.path.abspath(os.path.join(datasets_root(), ADE20K_DIRNAME))
    return (
        os.path.join(base, "images", split),
        os.path.join(base, ADE20K_LABEL_DIRNAME, split),
    )


def _cityscapes_roots(split: str) -> Tuple[str, str]:
    base = os.path.abspath(os.path.join(datasets_root(), CITYSCAPES_DIRNAME))
    return os.path.join(base, "leftImg8bit", split), os.path.join(base, "gtFine", split)


def _hint(script: str, folder: str) -> str:
    return (
        f"Put the dataset at $DETECTRON2_DATASETS/{folder} (now '{datasets_root()}') and run "
        f"`python datasets/{script}` to write the label maps (see datasets/README.md)."
    )


def _register_builtin_splits(
    splits: Dict[str, str],
    roots: Callable[[str], Tuple[str, str]],
    class_names: Sequence[str],
    prompt_names: Sequence[str],
    colors: Sequence[Sequence[int]],
    image_suffix: str,
    label_suffix: str,
    script: str,
    folder: str,
) -> None:
    """Registers each ``{name: split}`` of one builtin dataset unless ``name`` is already taken."""
    registered = set(DatasetCatalog.list())
    for name, split in splits.items():
        if name not in registered:
            _register(
                name,
                lambda split=split: roots(split),
                class_names,
                prompt_names,
                colors,
                IGNORE_LABEL,
                image_suffix,
                label_suffix,
                hint=lambda: _hint(script, folder),
                overwrite=False,
            )


def _register_builtins() -> None:
    _register_builtin_splits(
        ADE20K_SPLITS,
        _ade20k_roots,
        ADE20K_CLASSES,
        ADE20K_PROMPT_CLASSES,
        ADE20K_COLORS,
        image_suffix=".jpg",
        label_suffix=".png",
        script="prepare_ade20k_sem_seg.py",
        folder=ADE20K_DIRNAME,
    )
    _register_builtin_splits(
        CITYSCAPES_SPLITS,
        _cityscapes_roots,
        CITYSCAPES_CLASSES,
        CITYSCAPES_PROMPT_CLASSES,
        CITYSCAPES_COLORS,
        image_suffix=CITYSCAPES_IMAGE_SUFFIX,
        label_suffix=CITYSCAPES_LABEL_SUFFIX,
        script="prepare_cityscapes_sem_seg.py",
        folder=CITYSCAPES_DIRNAME,
    )


_register_builtins()
