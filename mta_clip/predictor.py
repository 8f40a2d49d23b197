"""``Predictor``: a model from a config file and weights, applied to BGR numpy images.

    predictor = Predictor("model_final.pth")                 # a model file written by train_net.py
    predictor = Predictor("configs/ade20k/...yaml", "model_final.pth", device="cuda")
    out = predictor(cv2.imread("street.jpg"))         # out["labels"] (H, W), out["probs"] (C, H, W)
    outs = predictor.predict_batch([img1, img2])      # one model call per ``batch_size`` images
    cv2.imwrite("overlay.png", predictor.visualize(image, out))  # overlay + legend, BGR

The image is resized like the test data (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``); the outputs
have the input's size. Test-time augmentation follows the config (TEST.AUG / TEST.SLIDE).
``probs`` are per-pixel class distributions: the model's scores divided by their per-pixel sum
(the Mask2Former score sum_q softmax(class)*sigmoid(mask) is not normalized).
"""

import logging
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.modeling import build_model

from .checkpointer import AtomicCheckpointer, check_weights_file
from .config import setup_cfg
from .demo_io import to_bgr_uint8
from .evaluation.test_time_augmentation import build_test_model, normalize_scores, test_mapper_augmentations

__all__ = ["Predictor", "to_bgr_uint8", "load_config"]

logger = logging.getLogger(__name__)


def load_config(
    config_file: str,
    opts: Optional[Sequence[str]] = None,
    dataset_files: Sequence[str] = (),
    imports: Sequence[str] = (),
):
    """Detectron2 defaults + this project's keys + ``config_file`` + ``opts`` (not frozen); the
    dataset files / imports are registered first."""
    return setup_cfg(config_file, list(opts or []), dataset_files, imports)


def _is_config_file(path: str) -> bool:
    return str(path).lower().endswith((".yaml", ".yml"))


def _metadata_for(cfg, info: Optional[Dict] = None) -> Metadata:
    """The model file's class names and palette, else the metadata of the first test / training
    dataset when it matches the model, else generated names/colors."""
    from .data.datasets import default_palette

    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if info is not None and len(info["classes"]) == num_classes:
        return Metadata(
            name=f"model_file:{info.get('dataset', '')}",
            stuff_classes=list(info["classes"]),
            stuff_colors=[tuple(c) for c in info["palette"]],
            ignore_label=int(info["ignore_label"]),
        )
    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        meta = MetadataCatalog.get(name)
        if len(getattr(meta, "stuff_classes", [])) == num_classes:
            return meta
    names = [f"class {i}" for i in range(num_classes)]
    return Metadata(
        name="mta_clip_predictor", stuff_classes=names, stuff_colors=default_palette(num_classes), ignore_label=255
    )


class Predictor:
    """Semantic segmentation of BGR numpy images with a model built from a config."""

    def __init__(
        self,
        config_file: str,
        weights: Optional[str] = None,
        device: str = "cpu",
        opts: Optional[Sequence[str]] = None,
        dataset_files: Sequence[str] = (),
        imports: Sequence[str] = (),
    ):
        """
        Args:
            config_file: YAML config of the model, or a model file written by ``train_net.py``
                (its config, class names and palette are inside: nothing else is needed).
            weights: checkpoint path (Detectron2 ``.pth`` / ``.pkl``); None keeps MODEL.WEIGHTS,
                "" builds a randomly initialized model.
            device: "cpu", "cuda", "cuda:1", ...
            opts: extra "KEY VALUE" config overrides.
            dataset_files: dataset files to register first (a config naming its own datasets).
            imports: modules / .py files to import first (own registration code).
        Loading is strict (``TEST.STRICT_WEIGHTS``): weights that do not fit the model are an error.
        """
        from . import data, modeling  # noqa: F401  (registers models and datasets)
        from .model_file import config_from_model_file, read_model_info

        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} was asked for but CUDA is not available")
        opts = list(opts or []) + ["MODEL.DEVICE", str(device)]
        if _is_config_file(config_file):
            cfg = load_config(config_file, opts, dataset_files, imports)
            if weights is not None:
                cfg.MODEL.WEIGHTS = weights
        else:
            if weights is not None:
                raise ValueError(
                    f"Predictor({config_file!r}, weights={weights!r}): give a config file with weights, "
                    "or a model file alone"
                )
            cfg = config_from_model_file(config_file, opts, dataset_files, imports, for_prediction=True)
        if cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES <= 0:
            raise ValueError(
                "MODEL.SEM_SEG_HEAD.NUM_CLASSES is 0 (= follow the training data) but the config names no dataset: set "
                "it, pass dataset_files naming the config's datasets, or use a model file written by train_net.py"
            )
        cfg.freeze()
        check_weights_file(cfg)  # before the (slow) build: a URL or a missing file is a clear error
        info = read_model_info(cfg.MODEL.WEIGHTS) if cfg.MODEL.WEIGHTS else None
        self.cfg = cfg
        model = build_model(cfg)
        model.eval()
        if cfg.MODEL.WEIGHTS:
            AtomicCheckpointer(model, strict=cfg.TEST.STRICT_WEIGHTS).load(cfg.MODEL.WEIGHTS)
        else:
            logger.warning("MODEL.WEIGHTS is empty: the model has random weights")
        self.model = build_test_model(cfg, model)
        self.model.eval()
        self.device = torch.device(cfg.MODEL.DEVICE)
        self.metadata = _metadata_for(cfg, info)
        self.num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("BGR", "RGB"):
            raise ValueError(f"INPUT.FORMAT must be 'BGR' or 'RGB', got {self.input_format!r}")
        resize = test_mapper_augmentations(cfg)  # none for multi-scale views of the original image
        self.resize = resize[0] if resize else None

    def _to_input(self, image_bgr: np.ndarray) -> Dict:
        image = to_bgr_uint8(image_bgr)
        height, width = image.shape[:2]
        if self.input_format == "RGB":
            image = image[:, :, ::-1]
        if self.resize is not None:
            image = self.resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width}

    def visualize(self, image_bgr: np.ndarray, result: Dict[str, np.ndarray], alpha: float = 0.55) -> np.ndarray:
        """The overlay of ``result["labels"]`` on ``image_bgr`` with class names and a legend
        (:func:`mta_clip.visualization.render_overlay`), as a BGR uint8 image; inputs smaller than
        384 pixels are upscaled so that the text is readable."""
        from .visualization import render_overlay, short_names

        image = to_bgr_uint8(image_bgr)
        names = short_names(self.metadata.stuff_classes)
        vis = render_overlay(image[:, :, ::-1], result["labels"], names, self.metadata.stuff_colors, alpha=alpha)
        return np.ascontiguousarray(vis[:, :, ::-1])

    def __call__(self, image_bgr: np.ndarray, return_probs: bool = True) -> Dict[str, np.ndarray]:
        """(H, W[, 3|4|1]) BGR image -> ``labels`` (H, W) int64 and ``probs`` (C, H, W) float32."""
        return self.predict_batch([image_bgr], return_probs=return_probs)[0]

    def predict_batch(
        self,
        images: Sequence[np.ndarray],
        batch_size: Optional[int] = None,
        return_probs: bool = True,
    ) -> List[Dict[str, np.ndarray]]:
        """Like ``__call__`` for a list of images; ``batch_size`` images per model call (all)."""
        images = list(images)
        step = len(images) if not batch_size else int(batch_size)
        results = []
        with torch.no_grad():
            for i in range(0, len(images), max(step, 1)):
                inputs = [self._to_input(img) for img in images[i : i + step]]
                for out in self.model(inputs):
                    scores = out["sem_seg"].float()
                    result = {"labels": scores.argmax(dim=0).cpu().numpy().astype(np.int64)}
                    if return_probs:
                        result["probs"] = normalize_scores(scores, "sum").cpu().numpy().astype(np.float32)
                    results.append(result)
        return results
