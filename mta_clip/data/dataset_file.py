"""Dataset files: a semantic-segmentation dataset declared in a small YAML or JSON file, no code.

    # my_data.yaml  (paths are relative to this file's folder)
    name: my_data
    classes: [background, cat, dog]          # label value i = classes[i]
    prompt_names: [background, cat, dog]     # optional: short names for the CLIP prompt slot
    palette: [[0, 0, 0], [200, 40, 40], [40, 40, 200]]   # optional RGB per class
    ignore_label: 255                        # optional (default 255): label value that is not a class
    image_suffix: .jpg                       # optional (default .jpg)
    label_suffix: .png                       # optional (default .png)
    splits:                                  # registers my_data_train and my_data_val
      train: {images: images/train, labels: labels/train}
      val: {images: images/val, labels: labels/val}

Instead of ``splits`` a file may give ``images`` / ``labels`` at the top level: it then registers
``name`` itself. Files are read with ``yaml.safe_load`` (JSON is YAML): nothing in them runs.
Images and label maps pair up by their path relative to the folder minus the suffix (see
``load_sem_seg_pairs``). The metadata of every dataset registered here also has ``dataset_file``.
"""

import argparse
import importlib
import importlib.util
import logging
import os
from typing import Any, Dict, List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..safe_yaml import safe_load_yaml_file
from .datasets import IGNORE_LABEL, register_sem_seg_dataset

__all__ = [
    "add_dataset_arguments",
    "import_registration",
    "prepare_datasets",
    "read_dataset_file",
    "register_dataset_file",
    "register_dataset_files",
]

logger = logging.getLogger(__name__)

_KEYS = {
    "name",
    "classes",
    "prompt_names",
    "palette",
    "ignore_label",
    "image_suffix",
    "label_suffix",
    "splits",
    "images",
    "labels",
}
_SPLIT_KEYS = {"images", "labels", "image_suffix", "label_suffix"}
# dataset name -> normalized spec it was registered with from a dataset file (same spec again: no-op)
_REGISTERED: Dict[str, Dict[str, Any]] = {}


def _fail(path: str, message: str) -> ValueError:
    return ValueError(f"dataset file {path}: {message}")


def _string_list(path: str, spec: Dict, key: str) -> List[str]:
    value = spec[key]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, (str, int, float)) for v in value):
        raise _fail(path, f"'{key}' must be a non-empty list of names, got {value!r}")
    return [str(v) for v in value]


def _folder(path: str, where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(path, f"'{where}' must be a folder path (relative to the file's folder), got {value!r}")
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), os.path.expanduser(value)))


def read_dataset_file(path: str) -> List[Dict[str, Any]]:
    """Reads and checks a dataset file; returns one ``register_sem_seg_dataset`` keyword dict per
    dataset it declares (``name``, ``image_root``, ``label_root``, ``class_names``, ...).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown or missing keys, wrong types, a Python tag (message names file and key).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dataset file {path} ({os.path.abspath(path)}) does not exist")
    spec = safe_load_yaml_file(path, "dataset file")
    if not isinstance(spec, dict):
        raise _fail(path, f"expected a mapping (name, classes, splits or images/labels), got {type(spec).__name__}")
    unknown = sorted(set(spec) - _KEYS)
    if unknown:
        raise _fail(path, f"unknown key(s) {unknown}; known keys: {sorted(_KEYS)}")
    for key in ("name", "classes"):
        if key not in spec:
            raise _fail(path, f"missing key '{key}'")
    name = spec["name"]
    if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name):
        raise _fail(path, f"'name' must be a non-empty name without spaces, got {name!r}")
    common = {"class_names": _string_list(path, spec, "classes")}
    if spec.get("prompt_names") is not None:
        common["prompt_names"] = _string_list(path, spec, "prompt_names")
    if spec.get("palette") is not None:
        palette = spec["palette"]
        if not isinstance(palette, list) or not all(isinstance(c, list) for c in palette):
            raise _fail(path, f"'palette' must be a list of [R, G, B] lists, got {palette!r}")
        common["colors"] = palette
    ignore = spec.get("ignore_label", IGNORE_LABEL)
    if isinstance(ignore, bool) or not isinstance(ignore, int):
        raise _fail(path, f"'ignore_label' must be an integer, got {ignore!r}")
    common["ignore_label"] = ignore
    suffixes = {}
    for key in ("image_suffix", "label_suffix"):
        if key in spec:
            if not isinstance(spec[key], str) or not spec[key]:
                raise _fail(path, f"'{key}' must be a file-name ending such as '.png', got {spec[key]!r}")
            suffixes[key] = spec[key]
    has_top = "images" in spec or "labels" in spec
    if ("splits" in spec) == has_top:
        raise _fail(path, "give either 'splits' (name -> {images, labels}) or top-level 'images' and 'labels'")
    if has_top:
        splits = {None: {"images": spec.get("images"), "labels": spec.get("labels")}}
    else:
        if not isinstance(spec["splits"], dict) or not spec["splits"]:
            raise _fail(path, f"'splits' must map split names to {{images, labels}}, got {spec['splits']!r}")
        splits = spec["splits"]
    out = []
    for split, folders in splits.items():
        where = "" if split is None else f"splits.{split}."
        if not isinstance(folders, dict):
            raise _fail(path, f"'{where[:-1]}' must be a mapping with images and labels, got {folders!r}")
        unknown = sorted(set(folders) - _SPLIT_KEYS)
        if unknown and split is not None:
            raise _fail(path, f"unknown key(s) {unknown} in '{where[:-1]}'; known: {sorted(_SPLIT_KEYS)}")
        entry = dict(common, **suffixes)
        entry["name"] = name if split is None else f"{name}_{split}"
        entry["image_root"] = _folder(path, where + "images", folders.get("images"))
        entry["label_root"] = _folder(path, where + "labels", folders.get("labels"))
        for key in ("image_suffix", "label_suffix"):
            if key in folders:
                entry[key] = folders[key]
        out.append(entry)
    return out


def register_dataset_file(path: str) -> List[str]:
    """Registers every dataset of a dataset file (see the module docstring); returns their names.

    Registering the same file (same content) again does nothing; a name already taken by another
    registration is a ValueError naming both.
    """
    path = os.path.abspath(os.path.expanduser(path))
    names = []
    for entry in read_dataset_file(path):
        name = entry["name"]
        if _REGISTERED.get(name) == entry and name in DatasetCatalog.list():
            names.append(name)
            continue
        if name in DatasetCatalog.list():
            other = MetadataCatalog.get(name).get("dataset_file", None)
            by = f"by dataset file {other}" if other else "by code (a built-in or register_sem_seg_dataset)"
            if other is None:
                raise ValueError(f"dataset file {path}: dataset '{name}' is already registered {by}; use another name")
            logger.warning("dataset '%s' from %s replaces its registration %s", name, path, by)
        kwargs = {k: v for k, v in entry.items() if k != "name"}
        image_root, label_root = kwargs.pop("image_root"), kwargs.pop("label_root")
        try:
            register_sem_seg_dataset(name, image_root, label_root, overwrite=True, **kwargs)
        except ValueError as e:
            raise ValueError(f"dataset file {path}: {e}") from None
        MetadataCatalog.get(name).set(dataset_file=path)
        _REGISTERED[name] = entry
        names.append(name)
        logger.info("Registered dataset '%s' from %s (%d classes)", name, path, len(entry["class_names"]))
    return names


def register_dataset_files(paths: Sequence[str]) -> List[str]:
    """``register_dataset_file`` for each path; returns all registered names in order."""
    names: List[str] = []
    for path in paths:
        names.extend(register_dataset_file(path))
    return names


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the options of the scripts that register datasets before their work (``train_net.py``,
    ``demo/demo.py``, ``tools/validate_dataset.py``): ``--dataset-file`` (``args.dataset_file``,
    for :func:`register_dataset_file`) and ``--import`` (``args.imports``, for
    :func:`import_registration`), both repeatable lists."""
    parser.add_argument(
        "--dataset-file",
        action="append",
        default=[],
        metavar="FILE",
        help="dataset file (YAML/JSON: name, classes, image/label folders) to register first; repeatable",
    )
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help="module or .py file to import first (own dataset registration, e.g. code calling "
        "mta_clip.register_sem_seg_dataset); repeatable",
    )


def import_registration(target: str) -> None:
    """Imports a module name or a ``.py`` file (a user's own registration code, ``--import``).

    Raises:
        ImportError: no such module or file (message names ``target``).
    """
    if target.endswith(".py") or os.path.sep in target:
        if not os.path.isfile(target):
            raise ImportError(f"--import {target}: no such file")
        spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(target))[0], target)
        if spec is None or spec.loader is None:
            raise ImportError(f"--import {target}: cannot import this file")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            importlib.import_module(target)
        except ImportError as e:
            raise ImportError(f"--import {target}: {e}") from e


def prepare_datasets(cfg, dataset_files: Sequence[str] = (), imports: Sequence[str] = ()) -> None:
    """Makes a (not frozen) config's datasets usable, in place: imports ``imports``, registers
    ``cfg.DATASETS.FILES`` plus ``dataset_files`` (stored back as absolute paths, so the saved
    config works from any folder), then sets / checks ``MODEL.SEM_SEG_HEAD.NUM_CLASSES``."""
    from .num_classes import resolve_num_classes

    for target in imports:
        import_registration(target)
    files = []
    for path in list(cfg.DATASETS.FILES) + list(dataset_files):
        path = os.path.abspath(os.path.expanduser(path))
        if path not in files:
            files.append(path)
    register_dataset_files(files)
    cfg.DATASETS.FILES = files
    resolve_num_classes(cfg)
