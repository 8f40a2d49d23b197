"""SemSegTTA: multi-scale, flip and sliding-window inference around a meta-architecture."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from torch import nn

from mta_clip.config import add_mtaclip_config
from mta_clip.evaluation import SemSegTTA, build_test_model, normalize_scores, sliding_windows

C = 5


class ConstantModel(nn.Module):
    """Scores that are the same vector v at every pixel; records the image sizes it sees."""

    def __init__(self, v):
        super().__init__()
        self.eval()
        self.v = v
        self.sizes = []

    def forward(self, batched_inputs):
        out = []
        for x in batched_inputs:
            self.sizes.append(tuple(x["image"].shape[-2:]))
            out.append({"sem_seg": self.v[:, None, None].expand(C, x["height"], x["width"]).clone()})
        return out


class PixelwiseModel(nn.Module):
    """Non-negative scores computed from each pixel's color alone (a 1x1 'network'),
    resized bilinearly to (height, width) like a real meta-architecture."""

    def __init__(self):
        super().__init__()
        self.eval()
        g = torch.Generator().manual_seed(0)
        self.weight = torch.randn(C, 3, generator=g) / 100.0
        self.calls = 0

    def forward(self, batched_inputs):
        self.calls += 1
        out = []
        for x in batched_inputs:
            img = x["image"].float()
            scores = torch.einsum("ck,khw->chw", self.weight, img).sigmoid()
            if tuple(scores.shape[-2:]) != (x["height"], x["width"]):
                scores = F.interpolate(scores[None], (x["height"], x["width"]), mode="bilinear", align_corners=False)[0]
            out.append({"sem_seg": scores})
        return out


def _image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize(
    "h, w, crop, stride",
    [
        (100, 130, (40, 50), (27, 33)),
        (40, 50, (40, 50), (27, 33)),
        (30, 70, (64, 64), (43, 43)),
        (65, 64, (32, 32), (32, 32)),
    ],
)
def test_sliding_windows_cover_the_image(h, w, crop, stride):
    windows = sliding_windows(h, w, crop, stride)
    cover = torch.zeros(h, w, dtype=torch.int64)
    for y0, y1, x0, x1 in windows:
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
        assert y1 - y0 == min(crop[0], h) and x1 - x0 == min(crop[1], w)
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    assert max(w[1] for w in windows) == h and max(w[3] for w in windows) == w
    # Number of windows per axis: 1 + ceil((size - crop) / stride) when the image is larger.
    rows = 1 if h <= crop[0] else 1 + -(-(h - crop[0]) // stride[0])
    cols = 1 if w <= crop[1] else 1 + -(-(w - crop[1]) // stride[1])
    assert len(windows) == rows * cols


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(scales=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75], flip=True),
        dict(slide=True, crop_size=(16, 16), stride=(11, 11)),
        dict(scales=[0.5, 1.0, 1.75], flip=True, slide=True, crop_size=(16, 16), stride=(11, 11), slide_batch_size=3),
    ],
)
@pytest.mark.parametrize("normalize", ["softmax", "sum", "none"])
def test_constant_model_gives_single_scale_result(kwargs, normalize):
    v = torch.tensor([0.3, 2.0, 0.1, 1.2, 0.7])
    single = ConstantModel(v)([{"image": _image(24, 30), "height": 37, "width": 41}])[0]["sem_seg"]
    tta = SemSegTTA(ConstantModel(v), normalize=normalize, **kwargs)
    out = tta(
        [{"image": _image(24, 30), "height": 37, "width": 41}, {"image": _image(20, 20), "height": 20, "width": 20}]
    )
    assert out[0]["sem_seg"].shape == (C, 37, 41) and out[1]["sem_seg"].shape == (C, 20, 20)
    expected = {"softmax": v.softmax(0), "sum": v / v.sum(), "none": v}[normalize]
    torch.testing.assert_close(out[0]["sem_seg"], expected[:, None, None].expand(C, 37, 41))
    assert torch.equal(out[0]["sem_seg"].argmax(0), single.argmax(0))


def test_views_have_the_right_sizes():
    model = ConstantModel(torch.ones(C))
    SemSegTTA(model, scales=[0.5, 1.0, 1.5], flip=True)([{"image": _image(20, 30), "height": 20, "width": 30}])
    assert model.sizes == [(10, 15), (10, 15), (20, 30), (20, 30), (30, 45), (30, 45)]
    model.sizes.clear()
    tta = SemSegTTA(model, slide=True, crop_size=(16, 16), stride=(10, 12))
    tta([{"image": _image(20, 30), "height": 9, "width": 9}])
    assert model.sizes == [(16, 16)] * 6  # 2 rows (y 0, 4) x 3 columns (x 0, 12, 14)


@pytest.mark.parametrize("batch", [1, 4])
def test_slide_and_flip_equal_whole_image_for_pixelwise_model(batch):
    model = PixelwiseModel()
    inputs = [{"image": _image(45, 61, seed=1), "height": 50, "width": 70}]
    whole = SemSegTTA(model, normalize="sum")(inputs)[0]["sem_seg"]
    direct = normalize_scores(model(inputs)[0]["sem_seg"], "sum")
    torch.testing.assert_close(whole, direct)
    slid = SemSegTTA(model, slide=True, crop_size=(20, 24), stride=(13, 17), slide_batch_size=batch, normalize="sum")
    torch.testing.assert_close(slid(inputs)[0]["sem_seg"], whole, rtol=1e-5, atol=1e-6)
    flipped = SemSegTTA(model, flip=True, slide=True, crop_size=(20, 24), stride=(13, 17), normalize="sum")
    torch.testing.assert_close(flipped(inputs)[0]["sem_seg"], whole, rtol=1e-5, atol=1e-6)


def test_multiscale_is_the_mean_of_the_views():
    model = PixelwiseModel()
    image = _image(16, 20, seed=2)
    tta = SemSegTTA(model, scales=[0.5, 1.5], flip=False, normalize="softmax")
    got = tta([{"image": image, "height": 16, "width": 20}])[0]["sem_seg"]
    views = []
    for s in (0.5, 1.5):
        size = (round(16 * s), round(20 * s))
        resized = F.interpolate(image[None].float(), size, mode="bilinear", align_corners=False)[0]
        resized = resized.round().clamp(0, 255).to(torch.uint8)
        scores = model([{"image": resized, "height": 16, "width": 20}])[0]["sem_seg"]
        views.append(scores.softmax(0))
    torch.testing.assert_close(got, (views[0] + views[1]) / 2)


def test_training_mode_delegates():
    model = PixelwiseModel()
    tta = SemSegTTA(model, scales=[0.5, 1.0], flip=True)
    assert not tta.training  # follows the wrapped model
    tta.train()
    out = tta([{"image": _image(8, 8), "height": 8, "width": 8}])
    assert model.calls == 1 and out[0]["sem_seg"].shape == (C, 8, 8)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="stride"):
        SemSegTTA(PixelwiseModel(), slide=True, crop_size=(8, 8), stride=(9, 4))
    with pytest.raises(ValueError, match="normalize"):
        SemSegTTA(PixelwiseModel(), normalize="mean")
    with pytest.raises(ValueError, match="scales"):
        SemSegTTA(PixelwiseModel(), scales=[])


def test_build_test_model_from_config():
    cfg = add_mtaclip_config(get_cfg())
    model = PixelwiseModel()
    assert build_test_model(cfg, model) is model
    cfg.TEST.AUG.ENABLED = True
    tta = build_test_model(cfg, model)
    assert isinstance(tta, SemSegTTA) and tta.model is model
    assert tta.scales == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] and tta.flip and not tta.slide
    assert tta.normalize == "softmax"
    cfg.TEST.AUG.ENABLED = False
    cfg.TEST.SLIDE.ENABLED = True
    cfg.TEST.SLIDE.CROP_SIZE = [1024, 1024]
    cfg.TEST.SLIDE.STRIDE = [683, 683]
    tta = build_test_model(cfg, model)
    assert tta.scales == [1.0] and not tta.flip and tta.slide
    assert tta.crop_size == (1024, 1024) and tta.stride == (683, 683)


def _mmcv_view_size(height, width, ratio):
    """mmseg TestTimeAug ``Resize(scale_factor=ratio, keep_ratio=True)`` on the original image (the
    authors' TTA), written from mmcv's arithmetic: ``_scale_size`` rounds (w, h) * ratio half up;
    ``imrescale`` -> ``rescale_size`` takes min(long / max(h, w), short / min(h, w)) of that target
    and applies ``_scale_size`` with it. Returns (h, w)."""
    target = (int(width * ratio + 0.5), int(height * ratio + 0.5))
    factor = min(max(target) / max(height, width), min(target) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


@pytest.mark.parametrize("test_hw", [(37, 50), (20, 27)])  # the original image, or one resized to the test size
def test_original_scale_reference_is_the_authors_tta(test_hw):
    ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    model = ConstantModel(torch.ones(C))
    tta = SemSegTTA(model, scales=ratios, flip=True, scale_reference="original")
    out = tta([{"image": _image(*test_hw), "height": 37, "width": 50}])[0]["sem_seg"]
    assert out.shape == (C, 37, 50)
    expected = [_mmcv_view_size(37, 50, r) for r in ratios for _ in (0, 1)]
    assert model.sizes == expected
    assert (19, 25) in expected and (65, 88) in expected  # 0.5 and 1.75 of 37 x 50 (18.5 rounds up)
    model.sizes.clear()
    SemSegTTA(model, scales=ratios, scale_reference="test_size")([{"image": _image(20, 27), "height": 37, "width": 50}])
    assert model.sizes[0] == (10, 14)  # the old way: scales of the test-resized input
    with pytest.raises(ValueError, match="SCALE_REFERENCE"):
        SemSegTTA(model, scale_reference="input")


def test_test_mapper_keeps_the_original_for_original_reference():
    import os

    from detectron2.data import transforms as T

    from mta_clip.config import setup_cfg
    from mta_clip.evaluation.test_time_augmentation import test_mapper_augmentations

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = setup_cfg(os.path.join(root, "configs/ade20k/mtaclip_R50_bs16_160k.yaml"))
    assert cfg.TEST.AUG.SCALE_REFERENCE == "original"
    (resize,) = test_mapper_augmentations(cfg)  # single scale: resized to the test size
    assert isinstance(resize, T.ResizeShortestEdge) and list(resize.short_edge_length) == [512, 512]
    cfg.TEST.AUG.ENABLED = True
    assert test_mapper_augmentations(cfg) == []  # multi-scale: views of the original image
    assert build_test_model(cfg, PixelwiseModel()).scale_reference == "original"
    cfg.TEST.AUG.SCALE_REFERENCE = "test_size"
    assert len(test_mapper_augmentations(cfg)) == 1
    ref = setup_cfg(os.path.join(root, "configs/ade20k/maskformer2_R50_bs16_160k.yaml"))
    assert ref.TEST.AUG.SCALE_REFERENCE == "test_size"
