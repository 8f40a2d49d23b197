"""Test-time augmentation for semantic segmentation: multi-scale, flip, sliding window.

``SemSegTTA`` wraps any meta-architecture that maps ``[{"image": (3, h, w), "height", "width"}]``
to ``[{"sem_seg": (C, height, width) scores}]`` and returns the same format.

Per input image (``image`` (3, h, w); ``height``, ``width`` the original size):

1. for every scale s in ``scales``: resize the image (bilinear) to s times the reference size:
   ``scale_reference="test_size"``: (round(s*h), round(s*w)), the input image resized to the test
   size by the test mapper; ``"original"``: s times (height, width) with mmcv's rounding (the
   MTA-CLIP authors' mmseg ``Resize(scale_factor=s, keep_ratio=True)`` on the original image; the
   test mapper then leaves the image at its original size, see ``test_mapper_augmentations``);
2. for every flip (none, and horizontal when ``flip``): flip the view;
3. run the model on the view, whole or by sliding window (``slide``): windows of ``crop_size``
   every ``stride`` pixels, the last window aligned to the image border, overlaps averaged;
4. undo the flip, resize the scores to (height, width) (bilinear), turn them into per-pixel
   probabilities (``normalize``) and average over all views.

``normalize``: the Mask2Former score sum_q softmax(class)*sigmoid(mask) is not a distribution.
``"softmax"`` (default) applies a softmax over classes to every view, as the authors' test code
does; ``"sum"`` divides by the per-pixel sum of scores; ``"none"`` averages raw scores. All three
keep the argmax of a single view, so a single view gives the single-scale labels.
"""

import logging
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from ..config import choice

__all__ = [
    "SemSegTTA",
    "build_test_model",
    "normalize_scores",
    "sliding_windows",
    "mmcv_rescaled_size",
    "test_mapper_augmentations",
    "SCALE_REFERENCES",
]

logger = logging.getLogger(__name__)

_NORMALIZE = ("softmax", "sum", "none")
#: values of ``TEST.AUG.SCALE_REFERENCE``
SCALE_REFERENCES = ("test_size", "original")


def mmcv_rescaled_size(height: int, width: int, factor: float) -> Tuple[int, int]:
    """(h, w) of an image (height, width) rescaled by ``factor`` as mmcv's ``Resize(scale_factor,
    keep_ratio=True)`` does: target (w, h) rounded half up, then the keep-ratio factor
    min(long'/long, short'/short) applied to both sides, rounded half up again."""
    target_w, target_h = int(width * factor + 0.5), int(height * factor + 0.5)
    ratio = min(max(target_w, target_h) / max(height, width), min(target_w, target_h) / min(height, width))
    return max(1, int(height * ratio + 0.5)), max(1, int(width * ratio + 0.5))


def test_mapper_augmentations(cfg) -> list:
    """Resize of the test mapper: to the test size (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``),
    none when ``TEST.AUG.ENABLED`` with ``TEST.AUG.SCALE_REFERENCE = "original"`` (the views are
    then resized from the original image)."""
    from detectron2.data import transforms as T

    reference = choice(SCALE_REFERENCES, cfg.TEST.AUG.SCALE_REFERENCE, "TEST.AUG.SCALE_REFERENCE")
    if (cfg.TEST.AUG.ENABLED and reference == "original") or cfg.INPUT.MIN_SIZE_TEST <= 0:
        return []
    return [T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)]


def normalize_scores(scores: torch.Tensor, mode: str) -> torch.Tensor:
    """(C, H, W) scores -> per-pixel class distribution (``mode`` "softmax" / "sum") or as is."""
    if mode == "softmax":
        return scores.softmax(dim=0)
    if mode == "sum":
        return scores / scores.sum(dim=0, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)
    if mode == "none":
        return scores
    raise ValueError(f"normalize must be one of {_NORMALIZE}, got {mode!r}")


def sliding_windows(
    height: int, width: int, crop_size: Tuple[int, int], stride: Tuple[int, int]
) -> List[Tuple[int, int, int, int]]:
    """Windows (y0, y1, x0, x1) covering an image; the last row / column ends at the border.

    A side shorter than the crop gets one window spanning it.
    """
    windows = []
    for y0 in _starts(height, crop_size[0], stride[0]):
        for x0 in _starts(width, crop_size[1], stride[1]):
            windows.append((y0, min(y0 + crop_size[0], height), x0, min(x0 + crop_size[1], width)))
    return windows


def _starts(size: int, crop: int, stride: int) -> List[int]:
    if size <= crop:
        return [0]
    n = (size - crop + stride - 1) // stride + 1  # enough steps to reach the border
    return [min(i * stride, size - crop) for i in range(n)]


def _resize_image(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(3, h, w) image -> (3, *size), bilinear; integer images stay integer (rounded)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    if not image.dtype.is_floating_point:
        info = torch.iinfo(image.dtype)
        out = out.round().clamp(info.min, info.max).to(image.dtype)
    return out


class SemSegTTA(nn.Module):
    """Multi-scale + flip + sliding-window inference around a semantic meta-architecture."""

    @configurable
    def __init__(
        self,
        model: nn.Module,
        *,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        slide: bool = False,
        crop_size: Tuple[int, int] = (512, 512),
        stride: Tuple[int, int] = (341, 341),
        slide_batch_size: int = 1,
        normalize: str = "softmax",
        scale_reference: str = "test_size",
    ):
        """
        Args:
            model: meta-architecture returning ``[{"sem_seg": (C, height, width)}]`` in eval mode.
            scales: factors of the test size (the size of the input ``image``).
            flip: also run horizontally flipped views.
            slide: sliding-window inference inside every view.
            crop_size / stride: window size and step (h, w) in pixels of the view.
            slide_batch_size: windows per model call.
            normalize: "softmax" / "sum" / "none", see the module docstring.
            scale_reference: "test_size" (scales of the input image's size) or "original" (of
                (height, width), mmcv rounding), see the module docstring.
        """
        super().__init__()
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be positive factors, got {list(scales)}")
        if normalize not in _NORMALIZE:
            raise ValueError(f"normalize must be one of {_NORMALIZE}, got {normalize!r}")
        crop_size, stride = tuple(int(v) for v in crop_size), tuple(int(v) for v in stride)
        if len(crop_size) != 2 or len(stride) != 2 or min(crop_size + stride) <= 0:
            raise ValueError(f"crop_size and stride must be two positive ints, got {crop_size}, {stride}")
        if any(s > c for s, c in zip(stride, crop_size)):
            raise ValueError(f"stride {stride} larger than crop_size {crop_size} leaves gaps")
        scale_reference = choice(SCALE_REFERENCES, scale_reference, "TEST.AUG.SCALE_REFERENCE")
        if slide_batch_size < 1:
            raise ValueError(f"slide_batch_size must be >= 1, got {slide_batch_size}")
        self.model = model
        self.scales = [float(s) for s in scales]
        self.flip = bool(flip)
        self.slide = bool(slide)
        self.crop_size = crop_size
        self.stride = stride
        self.slide_batch_size = int(slide_batch_size)
        self.normalize = normalize
        self.scale_reference = scale_reference
        self.train(model.training)  # wrapping keeps the model's mode

    @classmethod
    def from_config(cls, cfg, model: nn.Module) -> Dict:
        aug = cfg.TEST.AUG.ENABLED
        return {
            "model": model,
            "scales": list(cfg.TEST.AUG.SCALES) if aug else [1.0],
            "flip": bool(aug and cfg.TEST.AUG.FLIP),
            "slide": cfg.TEST.SLIDE.ENABLED,
            "crop_size": tuple(cfg.TEST.SLIDE.CROP_SIZE),
            "stride": tuple(cfg.TEST.SLIDE.STRIDE),
            "slide_batch_size": cfg.TEST.SLIDE.BATCH_SIZE,
            "normalize": cfg.TEST.AUG.NORMALIZE,
            "scale_reference": cfg.TEST.AUG.SCALE_REFERENCE,
        }

    def forward(self, batched_inputs: List[Dict]):
        """Training mode: the wrapped model's output. Eval: ``[{"sem_seg": (C, height, width)}]``."""
        if self.training:
            return self.model(batched_inputs)
        with torch.no_grad():
            return [{"sem_seg": self.inference_one(x)} for x in batched_inputs]

    def inference_one(self, inp: Dict) -> torch.Tensor:
        """One input dict -> (C, height, width) averaged probabilities."""
        image = inp["image"]
        h, w = image.shape[-2:]
        out_size = (int(inp.get("height", h)), int(inp.get("width", w)))
        total, n_views = None, 0
        for s in self.scales:
            if self.scale_reference == "original":
                size = mmcv_rescaled_size(out_size[0], out_size[1], s)
            else:
                size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
            view = _resize_image(image, size)
            for flipped in (False, True) if self.flip else (False,):
                x = view.flip(-1) if flipped else view
                scores = self._run(x)
                if flipped:
                    scores = scores.flip(-1)
                if tuple(scores.shape[-2:]) != out_size:
                    scores = F.interpolate(scores[None], size=out_size, mode="bilinear", align_corners=False)[0]
                probs = normalize_scores(scores.float(), self.normalize)
                total = probs if total is None else total + probs
                n_views += 1
        return total / n_views

    def _run(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) view -> (C, H, W) scores, whole or by sliding window."""
        h, w = image.shape[-2:]
        if not self.slide:
            return self.model([{"image": image, "height": h, "width": w}])[0]["sem_seg"]
        windows = sliding_windows(h, w, self.crop_size, self.stride)
        total, count = None, None
        for i in range(0, len(windows), self.slide_batch_size):
            chunk = windows[i : i + self.slide_batch_size]
            inputs = [
                {"image": image[:, y0:y1, x0:x1], "height": y1 - y0, "width": x1 - x0} for y0, y1, x0, x1 in chunk
            ]
            outputs = self.model(inputs)
            for (y0, y1, x0, x1), out in zip(chunk, outputs):
                scores = out["sem_seg"]
                if total is None:
                    total = scores.new_zeros((scores.shape[0], h, w))
                    count = scores.new_zeros((1, h, w))
                total[:, y0:y1, x0:x1] += scores
                count[:, y0:y1, x0:x1] += 1
        return total / count


def build_test_model(cfg, model: nn.Module) -> nn.Module:
    """``SemSegTTA(cfg, model)`` when TEST.AUG.ENABLED or TEST.SLIDE.ENABLED, else ``model``."""
    if cfg.TEST.AUG.ENABLED or cfg.TEST.SLIDE.ENABLED:
        wrapped = SemSegTTA(cfg, model)
        logger.info(
            "Test-time augmentation: scales %s of the %s, flip %s, slide %s (crop %s, stride %s), normalize %s",
            wrapped.scales,
            wrapped.scale_reference,
            wrapped.flip,
            wrapped.slide,
            wrapped.crop_size,
            wrapped.stride,
            wrapped.normalize,
        )
        return wrapped
    return model
