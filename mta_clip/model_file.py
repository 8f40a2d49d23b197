"""Self-describing model files: every checkpoint written by the trainer carries what prediction needs.

A checkpoint (``model_final.pth``, ``model_XXXXXXX.pth``, ``model_best.pth``) holds, next to
Detectron2's ``model`` / ``optimizer`` / ``scheduler`` / ``iteration``, a ``"mta_clip"`` dict:

=================  ==============================================================================
``format``         1
``classes``        display class names (label value i = classes[i])
``prompt_classes`` names put in the CLIP prompt slot
``palette``        RGB triple per class
``ignore_label``   label value that is not a class
``dataset``        the training dataset's name
``config``         the resolved config (YAML text, ``cfg.dump()``)
``clip_model_name`` (with a CLIP file) its shapes as a ``MODEL.CLIP.MODEL_NAME`` (clip/weights.py)
=================  ==============================================================================

``config_from_model_file`` rebuilds the config from it and registers the class list as metadata
(so MTA-CLIP's text encoder finds its prompt names without the dataset being registered);
``write_inference_file`` keeps only the weights and this dict (no optimizer state).
"""

import logging
import os
from typing import Any, Dict, Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog

from .atomic_io import save_torch_atomic

__all__ = [
    "INFO_KEY",
    "config_from_model_file",
    "model_info",
    "read_model_info",
    "register_model_metadata",
    "write_inference_file",
]

logger = logging.getLogger(__name__)

INFO_KEY = "mta_clip"
FORMAT = 1


def model_info(cfg: CfgNode) -> Dict[str, Any]:
    """The ``"mta_clip"`` dict of a config: class list etc. of its first training dataset
    (first test dataset when there is none), and the config itself."""
    from .data.datasets import default_palette

    names = list(cfg.DATASETS.TRAIN) or list(cfg.DATASETS.TEST)
    meta = MetadataCatalog.get(names[0]) if names else None
    num = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    classes = list(meta.get("stuff_classes", [])) if meta is not None else []
    if len(classes) != num:
        classes = [f"class {i}" for i in range(num)]
        prompts, palette = list(classes), default_palette(num)
    else:
        prompts = list(meta.get("prompt_classes", None) or classes)
        palette = [list(map(int, c)) for c in (meta.get("stuff_colors", None) or default_palette(num))]
    info = {
        "format": FORMAT,
        "classes": classes,
        "prompt_classes": prompts,
        "palette": [list(map(int, c)) for c in palette],
        "ignore_label": int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE),
        "dataset": names[0] if names else "",
        "config": cfg.dump(),
    }
    if cfg.MODEL.CLIP.WEIGHTS and os.path.isfile(cfg.MODEL.CLIP.WEIGHTS):
        from .modeling.clip.weights import read_clip_weights

        # The CLIP shapes, so that the model is rebuilt from this file without the CLIP file.
        info["clip_model_name"] = read_clip_weights(cfg.MODEL.CLIP.WEIGHTS)[1].model_name()
    return info


def _load(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file {path} ({os.path.abspath(path)}) does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (pickle / zip errors of many types: report them with the file)
        raise ValueError(f"model file {path} cannot be read as a checkpoint of this project: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"model file {path}: expected a checkpoint dict, got {type(data).__name__}")
    return data


def read_model_info(path: str, required: bool = False) -> Optional[Dict[str, Any]]:
    """The ``"mta_clip"`` dict of a model file, or None for a file without it (older checkpoints,
    Detectron2 / Mask2Former ``.pkl`` files). ``required``: an unreadable file is a ValueError."""
    if path.endswith(".pkl"):
        return None
    try:
        data = _load(path)
    except ValueError:
        if required:
            raise
        return None  # e.g. a third-party .pth that only Detectron2's loader reads
    info = data.get(INFO_KEY)
    if info is not None and (not isinstance(info, dict) or "config" not in info or "classes" not in info):
        raise ValueError(f"model file {path}: its '{INFO_KEY}' entry is not a model description")
    return info


def register_model_metadata(info: Dict[str, Any]) -> str:
    """Registers the class list of a model description as metadata; returns the metadata name."""
    name = f"model_file:{info.get('dataset') or 'unknown'}"
    fields = dict(
        stuff_classes=list(info["classes"]),
        prompt_classes=list(info.get("prompt_classes") or info["classes"]),
        stuff_colors=[tuple(c) for c in info["palette"]],
        ignore_label=int(info["ignore_label"]),
        evaluator_type="sem_seg",
    )
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)  # another model file with the same dataset name may differ
    MetadataCatalog.get(name).set(**fields)
    return name


def config_from_model_file(
    path: str,
    opts: Optional[Sequence[str]] = None,
    dataset_files: Sequence[str] = (),
    imports: Sequence[str] = (),
    for_prediction: bool = True,
) -> CfgNode:
    """The resolved config stored in a model file, with ``MODEL.WEIGHTS = path`` and ``opts`` on top
    (not frozen). ``for_prediction``: the model's class list is registered as metadata and used as
    ``DATASETS.TRAIN`` (no dataset needed); otherwise the stored dataset files are registered
    (evaluation needs the test data).

    Raises:
        ValueError: the file has no model description (message says what to pass instead).
    """
    from .config import add_mtaclip_config
    from .data.dataset_file import prepare_datasets

    info = read_model_info(path, required=True)
    if info is None:
        raise ValueError(
            f"model file {path} does not describe its model (no '{INFO_KEY}' entry: written by an older version, or a "
            "Detectron2 / Mask2Former file); pass the config it was trained with (--config-file, "
            "Predictor(config, weights))"
        )
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_mtaclip_config(cfg)
    cfg.merge_from_other_cfg(CfgNode.load_cfg(info["config"]))
    cfg.MODEL.WEIGHTS = path
    # The CLIP weights are inside the model file: no separate CLIP file is read at build time.
    if info.get("clip_model_name"):
        cfg.MODEL.CLIP.MODEL_NAME = info["clip_model_name"]
        cfg.MODEL.CLIP.WEIGHTS = ""
    cfg.merge_from_list(list(opts or []))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but CUDA is not available: using the CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    # The model's own class list defines the model (MTA-CLIP's prompts): no training data needed.
    cfg.DATASETS.TRAIN = (register_model_metadata(info),)
    if for_prediction:
        cfg.DATASETS.TEST = ()
        cfg.DATASETS.FILES = []
    else:
        missing = [f for f in cfg.DATASETS.FILES if not os.path.isfile(f)]
        if missing:
            logger.warning("dataset files named by the model's config are not here (left out): %s", missing)
        cfg.DATASETS.FILES = [f for f in cfg.DATASETS.FILES if os.path.isfile(f)]
    prepare_datasets(cfg, dataset_files, imports)
    return cfg


def write_inference_file(src: str, dst: str) -> Dict[str, int]:
    """Writes ``dst`` with only the weights and the model description of checkpoint ``src``.

    Returns:
        ``{"tensors": n, "src_bytes": ..., "dst_bytes": ...}``.
    Raises:
        ValueError: ``src`` has no weights or no model description.
    """
    data = _load(src)
    if not isinstance(data.get("model"), dict):
        raise ValueError(f"model file {src}: no 'model' weights in it")
    if INFO_KEY not in data:
        raise ValueError(f"model file {src}: no '{INFO_KEY}' model description (not written by this project's trainer)")
    save_torch_atomic({"model": data["model"], INFO_KEY: data[INFO_KEY]}, dst)
    return {"tensors": len(data["model"]), "src_bytes": os.path.getsize(src), "dst_bytes": os.path.getsize(dst)}
