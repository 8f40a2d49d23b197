"""Training mapper for semantic segmentation with mask-classification targets.

Turns one Detectron2 dataset dict (``file_name``, ``sem_seg_file_name``, ``height``, ``width``) into
the model input of the data contract (docs/CONTRIBUTING.md):

* ``image``: (3, H, W) uint8 tensor in ``cfg.INPUT.FORMAT``;
* ``sem_seg``: (H, W) int64 tensor, ``ignore_label`` on unlabelled and padded pixels;
* ``instances``: ``Instances`` of size (H, W) with ``gt_classes`` (M,) int64 and ``gt_masks``
  (M, H, W) bool, one binary mask per class present in ``sem_seg`` (ignore excluded; M may be 0).

Training augmentation: random resize (``INPUT.TRAIN_RESIZE``), random crop with a maximum single-category area,
SSD-style photometric distortion (image only), random flip, then padding to
``INPUT.SIZE_DIVISIBILITY``.
"""

import copy
import logging
from typing import Dict, List, Optional, Sequence, Union

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Instances
from fvcore.transforms.transform import Transform

from ..config import choice
from .file_checks import check_label_values

__all__ = ["SemanticMaskFormerMapper", "ColorAugSSD", "PhotometricDistortTransform"]

logger = logging.getLogger(__name__)

_HSV_CODES = {
    "BGR": (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR),
    "RGB": (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB),
}


class PhotometricDistortTransform(Transform):
    """Deterministic SSD-style photometric distortion with fixed, already sampled parameters.

    Applied to (H, W, 3) uint8 images in ``img_format`` ("BGR" or "RGB"); segmentation and
    coordinates pass unchanged. A parameter of ``None`` skips that step. Order: brightness, then
    contrast (if ``contrast_first``), saturation, hue, then contrast (if not ``contrast_first``).
    """

    def __init__(
        self,
        img_format: str,
        brightness_delta: Optional[float] = None,
        contrast_alpha: Optional[float] = None,
        contrast_first: bool = True,
        saturation_alpha: Optional[float] = None,
        hue_delta: Optional[int] = None,
        truncate_each_step: bool = False,
    ):
        super().__init__()
        if img_format not in _HSV_CODES:
            raise ValueError(
                f"PhotometricDistortTransform: image format {img_format!r} is not supported; "
                f"expected one of {sorted(_HSV_CODES)}"
            )
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (H, W, 3) uint8."""
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(
                f"PhotometricDistortTransform expects an (H, W, 3) uint8 image, got shape {img.shape} dtype {img.dtype}"
            )
        if self.truncate_each_step:
            return self._apply_truncating(img)
        out = img.astype(np.float64)
        if self.brightness_delta is not None:
            out = np.clip(out + self.brightness_delta, 0.0, 255.0)
        if self.contrast_first and self.contrast_alpha is not None:
            out = np.clip(out * self.contrast_alpha, 0.0, 255.0)
        if self.saturation_alpha is not None or self.hue_delta is not None:
            to_hsv, from_hsv = _HSV_CODES[self.img_format]
            # OpenCV's uint8 HSV: H in [0, 180), S and V in [0, 255].
            hsv = cv2.cvtColor(np.round(out).astype(np.uint8), to_hsv).astype(np.int32)
            if self.saturation_alpha is not None:
                sat = np.round(hsv[..., 1] * self.saturation_alpha)
                hsv[..., 1] = np.clip(sat, 0, 255).astype(np.int32)
            if self.hue_delta is not None:
                hsv[..., 0] = np.mod(hsv[..., 0] + int(self.hue_delta), 180)
            out = cv2.cvtColor(hsv.astype(np.uint8), from_hsv).astype(np.float64)
        if not self.contrast_first and self.contrast_alpha is not None:
            out = np.clip(out * self.contrast_alpha, 0.0, 255.0)
        return np.round(out).astype(np.uint8)

    def _apply_truncating(self, img: np.ndarray) -> np.ndarray:
        """mmseg's ``PhotoMetricDistortion`` arithmetic (the MTA-CLIP authors'): every step computes
        in float32, clips to [0, 255] and truncates to uint8; saturation and hue each convert to
        HSV and back on their own."""
        to_hsv, from_hsv = _HSV_CODES[self.img_format]

        def convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
            return np.clip(x.astype(np.float32) * np.float32(alpha) + np.float32(beta), 0, 255).astype(np.uint8)

        out = img
        if self.brightness_delta is not None:
            out = convert(out, beta=self.brightness_delta)
        if self.contrast_first and self.contrast_alpha is not None:
            out = convert(out, alpha=self.contrast_alpha)
        if self.saturation_alpha is not None:
            hsv = cv2.cvtColor(out, to_hsv)
            hsv[:, :, 1] = convert(hsv[:, :, 1], alpha=self.saturation_alpha)
            out = cv2.cvtColor(hsv, from_hsv)
        if self.hue_delta is not None:
            hsv = cv2.cvtColor(out, to_hsv)
            hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int64) + int(self.hue_delta)) % 180
            out = cv2.cvtColor(hsv, from_hsv)
        if not self.contrast_first and self.contrast_alpha is not None:
            out = convert(out, alpha=self.contrast_alpha)
        return out

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation


class ColorAugSSD(T.Augmentation):
    """SSD-style photometric distortion policy (image only).

    Each step runs with probability 1/2: brightness shift in [-brightness_delta, brightness_delta],
    contrast factor in [contrast_low, contrast_high] (before or after the HSV steps, chosen at
    random), saturation factor in [saturation_low, saturation_high], hue shift in
    [-hue_delta, hue_delta] (OpenCV units, 180 = full turn).
    """

    def __init__(
        self,
        img_format: str,
        brightness_delta: float = 32.0,
        contrast_low: float = 0.5,
        contrast_high: float = 1.5,
        saturation_low: float = 0.5,
        saturation_high: float = 1.5,
        hue_delta: int = 18,
        truncate_each_step: bool = False,
    ):
        super().__init__()
        if img_format not in _HSV_CODES:
            raise ValueError(
                f"ColorAugSSD (INPUT.COLOR_AUG_SSD): INPUT.FORMAT={img_format!r} is not supported; "
                f"expected one of {sorted(_HSV_CODES)}"
            )
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        brightness = None
        if np.random.rand() < 0.5:
            brightness = float(np.random.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = bool(np.random.rand() < 0.5)
        contrast = None
        if np.random.rand() < 0.5:
            contrast = float(np.random.uniform(self.contrast_low, self.contrast_high))
        saturation = None
        if np.random.rand() < 0.5:
            saturation = float(np.random.uniform(self.saturation_low, self.saturation_high))
        hue = None
        if np.random.rand() < 0.5:
            hue = int(np.random.randint(-self.hue_delta, self.hue_delta + 1))
        return PhotometricDistortTransform(
            self.img_format,
            brightness_delta=brightness,
            contrast_alpha=contrast,
            contrast_first=contrast_first,
            saturation_alpha=saturation,
            hue_delta=hue,
            truncate_each_step=self.truncate_each_step,
        )


class CV2ResizeTransform(Transform):
    """Resize to (new_h, new_w) with OpenCV: bilinear for the image, nearest for labels (mmcv's imresize)."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return cv2.resize(img, (self.new_w, self.new_h), interpolation=cv2.INTER_LINEAR)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return cv2.resize(segmentation, (self.new_w, self.new_h), interpolation=cv2.INTER_NEAREST)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords[:, 0] = coords[:, 0] * (self.new_w * 1.0 / self.w)
        coords[:, 1] = coords[:, 1] * (self.new_h * 1.0 / self.h)
        return coords


class RandomRatioResize(T.Augmentation):
    """mmseg's ``RandomResize(scale, ratio_range, keep_ratio=True)`` (the authors' training resize).

    A ratio r uniform in ``ratio_range`` scales ``scale`` = (long, short) to (int(long r), int(short r));
    the image is then scaled by the largest factor that keeps its long side <= the first and its short
    side <= the second, each side rounded half up (mmcv's ``rescale_size``), with OpenCV.
    """

    def __init__(self, scale: Sequence[int], ratio_range: Sequence[float]):
        super().__init__()
        if len(scale) != 2 or min(scale) <= 0:
            raise ValueError(f"INPUT.TRAIN_RESIZE_SCALE={tuple(scale)}: expected two positive sizes (long, short)")
        if len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(
                f"INPUT.TRAIN_RESIZE_RATIO_RANGE={tuple(ratio_range)}: expected (low, high) with 0 < low <= high"
            )
        self.scale = tuple(int(s) for s in scale)
        self.ratio_range = tuple(float(r) for r in ratio_range)

    @staticmethod
    def output_size(h: int, w: int, scale: Sequence[int], ratio: float):
        """(new_h, new_w) for an (h, w) image at ``ratio``."""
        long_edge, short_edge = int(max(scale) * ratio), int(min(scale) * ratio)
        factor = min(long_edge / max(h, w), short_edge / min(h, w))
        return int(h * factor + 0.5), int(w * factor + 0.5)

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        low, high = self.ratio_range
        ratio = float(np.random.random_sample() * (high - low) + low)
        new_h, new_w = self.output_size(h, w, self.scale, ratio)
        return CV2ResizeTransform(h, w, new_h, new_w)


class SemanticMaskFormerMapper:
    """Dataset dict -> model input with per-class binary targets (see module docstring).

    With ``is_train=False`` no augmentation and no padding are applied; a dict without
    ``sem_seg_file_name`` then yields only ``image``.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: Sequence[Union[T.Augmentation, Transform]],
        image_format: str,
        ignore_label: int,
        num_classes: int,
        size_divisibility: int,
        pad_value: Union[int, Sequence[int]] = 128,
    ):
        if num_classes <= 0:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.NUM_CLASSES must be > 0, got {num_classes}")
        if 0 <= ignore_label < num_classes:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE={ignore_label} collides with a class index in [0, {num_classes})"
            )
        self.is_train = is_train
        self.augmentations = T.AugmentationList(list(augmentations))
        self.image_format = image_format
        self.ignore_label = int(ignore_label)
        self.num_classes = int(num_classes)
        self.size_divisibility = int(size_divisibility)
        values = list(pad_value) if isinstance(pad_value, (list, tuple)) else [pad_value]
        if len(values) not in (1, 3) or not all(0 <= v <= 255 for v in values):
            raise ValueError(
                f"INPUT.PAD_VALUE={pad_value} (or MODEL.PIXEL_MEAN with INPUT.PAD_WITH_PIXEL_MEAN): expected one "
                "image value or one per channel in [0, 255]"
            )
        self.pad_value = pad_value
        mode = "training" if is_train else "inference"
        logger.info(f"[{type(self).__name__}] augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict:
        augs: List[T.Augmentation] = []
        if is_train:
            resize = choice(("shortest_edge", "ratio_range"), cfg.INPUT.TRAIN_RESIZE, "INPUT.TRAIN_RESIZE")
            if resize == "ratio_range":
                augs.append(RandomRatioResize(cfg.INPUT.TRAIN_RESIZE_SCALE, cfg.INPUT.TRAIN_RESIZE_RATIO_RANGE))
            else:
                augs.append(
                    T.ResizeShortestEdge(
                        cfg.INPUT.MIN_SIZE_TRAIN,
                        cfg.INPUT.MAX_SIZE_TRAIN,
                        cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
                    )
                )
            if cfg.INPUT.CROP.ENABLED:
                augs.append(
                    T.RandomCrop_CategoryAreaConstraint(
                        cfg.INPUT.CROP.TYPE,
                        cfg.INPUT.CROP.SIZE,
                        cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                        cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                    )
                )
            if cfg.INPUT.COLOR_AUG_SSD:
                augs.append(
                    ColorAugSSD(img_format=cfg.INPUT.FORMAT, truncate_each_step=cfg.INPUT.COLOR_AUG_SSD_TRUNCATE)
                )
            flip = cfg.INPUT.RANDOM_FLIP
            if flip not in ("none", "horizontal", "vertical"):
                raise ValueError(f"INPUT.RANDOM_FLIP={flip!r}: expected 'none', 'horizontal' or 'vertical'")
            if flip != "none":
                augs.append(T.RandomFlip(horizontal=flip == "horizontal", vertical=flip == "vertical"))
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY if is_train else -1,
            # authors: padded after normalization with 0, i.e. the mean colour (here rounded to uint8)
            "pad_value": tuple(int(round(m)) for m in cfg.MODEL.PIXEL_MEAN)
            if cfg.INPUT.PAD_WITH_PIXEL_MEAN
            else cfg.INPUT.PAD_VALUE,
        }

    def _read_label(self, label_file: str) -> np.ndarray:
        """Reads and checks a label map; returns (H, W) uint8, or float64 for values > 255."""
        label = utils.read_image(label_file)
        if label.ndim == 3 and label.shape[2] == 1:
            label = label[:, :, 0]
        if label.ndim != 2:
            raise ValueError(
                f"Label file {label_file}: expected a single-channel label map, got an array of shape {label.shape}"
            )
        if not np.issubdtype(label.dtype, np.integer):
            raise ValueError(f"Label file {label_file}: expected integer labels, got dtype {label.dtype}")
        check_label_values(label, label_file, self.num_classes, self.ignore_label)
        values = np.unique(label)
        if values.max(initial=0) <= 255 and 0 <= self.ignore_label <= 255:
            return label.astype(np.uint8)
        # Resize works on uint8 (PIL) or floats (torch); float64 holds these integers exactly.
        return label.astype(np.float64)

    def _pad(self, image: np.ndarray, label: Optional[np.ndarray]):
        """Pads bottom/right to a multiple of ``size_divisibility`` (image: ``pad_value``, label: ignore)."""
        h, w = image.shape[:2]
        d = self.size_divisibility
        pad_h, pad_w = (-h) % d, (-w) % d
        if pad_h == 0 and pad_w == 0:
            return image, label
        padded = np.empty((h + pad_h, w + pad_w) + image.shape[2:], dtype=image.dtype)
        padded[...] = np.asarray(self.pad_value, dtype=image.dtype)  # one value, or one per channel
        padded[:h, :w] = image
        image = padded
        if label is not None:
            label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=self.ignore_label)
        return image, label

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        file_name = dataset_dict.get("file_name", "<no file_name>")
        label_file = dataset_dict.get("sem_seg_file_name")
        if label_file is None and self.is_train:
            raise KeyError(
                f"Dataset dict of image {file_name} has no 'sem_seg_file_name'; "
                f"{type(self).__name__} needs a label map for training"
            )
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        label = self._read_label(label_file) if label_file is not None else None
        if label is not None and label.shape != image.shape[:2]:
            raise ValueError(
                f"Label file {label_file} has size {label.shape} (H, W) but image {file_name} has {image.shape[:2]}"
            )

        aug_input = T.AugInput(image, sem_seg=label)
        self.augmentations(aug_input)
        image, label = aug_input.image, aug_input.sem_seg
        if self.size_divisibility > 0:
            image, label = self._pad(image, label)

        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if label is None:
            return dataset_dict
        sem_seg = torch.as_tensor(label.astype(np.int64))
        dataset_dict["sem_seg"] = sem_seg
        dataset_dict["instances"] = self._per_class_targets(sem_seg)
        return dataset_dict

    def _per_class_targets(self, sem_seg: torch.Tensor) -> Instances:
        """(H, W) int64 labels -> Instances with gt_classes (M,) int64, gt_masks (M, H, W) bool."""
        classes = torch.unique(sem_seg)
        classes = classes[classes != self.ignore_label]
        instances = Instances(tuple(sem_seg.shape))
        instances.gt_classes = classes.to(torch.int64)
        instances.gt_masks = sem_seg[None] == classes[:, None, None]
        return instances
