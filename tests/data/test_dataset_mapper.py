"""Tests of SemanticMaskFormerMapper and the SSD-style photometric distortion."""

import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg

from mta_clip.config import add_mtaclip_config
from mta_clip.data.dataset_mapper import (
    ColorAugSSD,
    PhotometricDistortTransform,
    SemanticMaskFormerMapper,
)

IGNORE = 255


def make_cfg(num_classes=5, **input_overrides):
    """Project cfg with no augmentation unless overridden (keys of cfg.INPUT, dotted for CROP)."""
    cfg = get_cfg()
    add_mtaclip_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = IGNORE
    cfg.INPUT.FORMAT = "BGR"
    cfg.INPUT.MIN_SIZE_TRAIN = (40,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.COLOR_AUG_SSD = False
    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    for key, value in input_overrides.items():
        node, *rest = key.split(".")
        if rest:
            setattr(getattr(cfg.INPUT, node), rest[0], value)
        else:
            setattr(cfg.INPUT, node, value)
    return cfg


def write_sample(folder, image_rgb, label, name="sample"):
    """Writes an RGB uint8 image and a uint8 label PNG; returns the dataset dict."""
    img_path = os.path.join(str(folder), f"{name}.png")
    lab_path = os.path.join(str(folder), f"{name}_label.png")
    assert cv2.imwrite(img_path, image_rgb[:, :, ::-1])
    assert cv2.imwrite(lab_path, label.astype(np.uint8))
    h, w = label.shape
    return {"file_name": img_path, "sem_seg_file_name": lab_path, "height": h, "width": w}


def random_sample(seed=0, h=40, w=56, classes=(0, 1, 3), ignore_frac=0.1):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = np.asarray(classes, np.uint8)[rng.integers(0, len(classes), (h, w))]
    label[rng.random((h, w)) < ignore_frac] = IGNORE
    return image, label


def check_contract(out, ignore=IGNORE):
    image, sem_seg, inst = out["image"], out["sem_seg"], out["instances"]
    h, w = sem_seg.shape
    assert image.dtype == torch.uint8 and image.shape == (3, h, w)
    assert sem_seg.dtype == torch.int64
    assert inst.image_size == (h, w)
    assert inst.gt_classes.dtype == torch.int64
    assert inst.gt_masks.dtype == torch.bool
    assert inst.gt_masks.shape == (len(inst.gt_classes), h, w)
    # Independent reference: one mask per class present, in a slow loop over the label values.
    present = sorted(v for v in set(sem_seg.flatten().tolist()) if v != ignore)
    assert inst.gt_classes.tolist() == present
    for cls, mask in zip(inst.gt_classes.tolist(), inst.gt_masks):
        assert torch.equal(mask, sem_seg == cls)
    assert not inst.gt_masks[:, sem_seg == ignore].any()


def test_contract_without_augmentation_is_exact(tmp_path):
    image, label = random_sample()
    d = write_sample(tmp_path, image, label)
    for fmt, expected in (("BGR", image[:, :, ::-1]), ("RGB", image)):
        out = SemanticMaskFormerMapper(make_cfg(FORMAT=fmt), is_train=True)(d)
        check_contract(out)
        assert np.array_equal(out["image"].permute(1, 2, 0).numpy(), expected)
        assert np.array_equal(out["sem_seg"].numpy(), label.astype(np.int64))
        assert out["instances"].gt_classes.tolist() == [0, 1, 3]
    assert "image" not in d  # the input dict is not modified


def test_contract_with_all_augmentations(tmp_path):
    image, label = random_sample(seed=1)
    d = write_sample(tmp_path, image, label)
    cfg = make_cfg(
        MIN_SIZE_TRAIN=(48, 64, 80),
        RANDOM_FLIP="horizontal",
        COLOR_AUG_SSD=True,
        SIZE_DIVISIBILITY=32,
        **{
            "CROP.ENABLED": True,
            "CROP.TYPE": "absolute",
            "CROP.SIZE": [48, 48],
            "CROP.SINGLE_CATEGORY_MAX_AREA": 0.75,
        },
    )
    mapper = SemanticMaskFormerMapper(cfg, is_train=True)
    np.random.seed(0)
    for _ in range(8):
        out = mapper(d)
        check_contract(out)
        assert out["sem_seg"].shape == (64, 64)  # crop <= 48, padded to a multiple of 32
        assert set(out["sem_seg"].unique().tolist()) <= {0, 1, 3, IGNORE}


def test_resize_scales_image_and_label(tmp_path):
    image, label = random_sample(seed=2)
    d = write_sample(tmp_path, image, label)
    out = SemanticMaskFormerMapper(make_cfg(MIN_SIZE_TRAIN=(80,)), is_train=True)(d)
    check_contract(out)
    assert out["sem_seg"].shape == (80, 112)
    # Nearest-neighbour resize by 2: every 2x2 block comes from one source pixel.
    assert np.array_equal(out["sem_seg"].numpy()[::2, ::2], label.astype(np.int64))


def test_flip_flips_image_and_label_together(tmp_path):
    image, label = random_sample(seed=3)
    d = write_sample(tmp_path, image, label)
    mapper = SemanticMaskFormerMapper(make_cfg(RANDOM_FLIP="horizontal"), is_train=True)
    np.random.seed(0)
    flipped = 0
    for _ in range(10):
        out = mapper(d)
        img = out["image"].permute(1, 2, 0).numpy()[:, :, ::-1]
        seg = out["sem_seg"].numpy()
        if np.array_equal(seg, label[:, ::-1]):
            flipped += 1
            assert np.array_equal(img, image[:, ::-1])
        else:
            assert np.array_equal(seg, label) and np.array_equal(img, image)
    assert 0 < flipped < 10


@pytest.mark.parametrize("pad_value", [None, 0])
def test_padding_fills_pad_value_and_ignore(tmp_path, pad_value):
    """Image padding is Mask2Former's grey 128 by default (INPUT.PAD_VALUE), labels get ignore."""
    image, label = random_sample(seed=4, h=40, w=56)
    fill = 128 if pad_value is None else pad_value
    image[image == fill] = fill + 1  # no pixel inside the image has the pad value
    d = write_sample(tmp_path, image, label)
    extra = {} if pad_value is None else {"PAD_VALUE": pad_value}
    out = SemanticMaskFormerMapper(make_cfg(SIZE_DIVISIBILITY=32, **extra), is_train=True)(d)
    check_contract(out)
    img, seg = out["image"].numpy(), out["sem_seg"].numpy()
    assert seg.shape == (64, 64)
    assert np.array_equal(seg[:40, :56], label)
    assert np.array_equal(img[:, :40, :56], image[:, :, ::-1].transpose(2, 0, 1))
    assert (img[:, 40:, :] == fill).all() and (img[:, :, 56:] == fill).all()
    assert (seg[40:, :] == IGNORE).all() and (seg[:, 56:] == IGNORE).all()
    assert not out["instances"].gt_masks[:, 40:, :].any()
    assert not out["instances"].gt_masks[:, :, 56:].any()


def test_padding_is_a_no_op_on_multiples(tmp_path):
    image, label = random_sample(seed=5, h=32, w=64)
    d = write_sample(tmp_path, image, label)
    out = SemanticMaskFormerMapper(make_cfg(SIZE_DIVISIBILITY=32, MIN_SIZE_TRAIN=(32,)), is_train=True)(d)
    assert out["sem_seg"].shape == (32, 64)


def test_all_ignore_label_gives_no_targets(tmp_path):
    image, _ = random_sample(seed=6)
    label = np.full(image.shape[:2], IGNORE, np.uint8)
    d = write_sample(tmp_path, image, label)
    out = SemanticMaskFormerMapper(make_cfg(SIZE_DIVISIBILITY=32), is_train=True)(d)
    check_contract(out)
    inst = out["instances"]
    assert len(inst) == 0
    assert inst.gt_classes.shape == (0,) and inst.gt_masks.shape == (0, 64, 64)


def _max_class_fraction(seg, ignore=IGNORE):
    values, counts = np.unique(seg[seg != ignore], return_counts=True)
    return counts.max() / counts.sum(), len(values)


@pytest.mark.parametrize("max_area", [0.9, 0.75])  # 0.75: the MTA-CLIP authors' (mmseg) cat_max_ratio
def test_crop_respects_single_category_max_area(tmp_path, max_area):
    # Two classes split at column 32 (plus an ignored band, which must not count): a 32x32
    # crop at x0 holds x0 columns of class 1, so crops with x0 < 4 or x0 > 28 exceed 0.9.
    label = np.zeros((64, 64), np.uint8)
    label[:, 32:] = 1
    label[:8, :] = IGNORE
    image = np.full((64, 64, 3), 128, np.uint8)
    d = write_sample(tmp_path, image, label)

    def fractions(max_area):
        cfg = make_cfg(
            MIN_SIZE_TRAIN=(64,),
            **{
                "CROP.ENABLED": True,
                "CROP.TYPE": "absolute",
                "CROP.SIZE": [32, 32],
                "CROP.SINGLE_CATEGORY_MAX_AREA": max_area,
            },
        )
        mapper = SemanticMaskFormerMapper(cfg, is_train=True)
        result = []
        for seed in range(40):
            np.random.seed(seed)
            out = mapper(d)
            assert out["sem_seg"].shape == (32, 32)
            result.append(_max_class_fraction(out["sem_seg"].numpy()))
        return result

    # mmseg's RandomCrop keeps a crop when len(cnt) > 1 and max(cnt) / sum(cnt) < cat_max_ratio
    # (ignore excluded), else redraws, at most 10 times
    constrained = fractions(max_area)
    assert all(frac < max_area and n == 2 for frac, n in constrained)
    unconstrained = fractions(1.0)
    assert sum(frac >= max_area for frac, _ in unconstrained) >= 4  # the constraint did something


def test_out_of_range_labels_raise_with_file_and_values(tmp_path):
    image, label = random_sample(seed=7)
    label[0, 0], label[1, 1], label[2, 2] = 7, 200, 5
    d = write_sample(tmp_path, image, label, name="bad")
    with pytest.raises(ValueError) as err:
        SemanticMaskFormerMapper(make_cfg(num_classes=5), is_train=True)(d)
    msg = str(err.value)
    assert d["sem_seg_file_name"] in msg
    assert "5, 7, 200" in msg
    # The same labels are fine with enough classes.
    SemanticMaskFormerMapper(make_cfg(num_classes=201), is_train=True)(d)


def test_sixteen_bit_labels(tmp_path):
    rng = np.random.default_rng(11)
    label = rng.integers(250, 300, (40, 56)).astype(np.uint16)
    label[:4] = 1000
    d = write_sample(tmp_path, np.zeros((40, 56, 3), np.uint8), np.zeros((40, 56)))
    assert cv2.imwrite(d["sem_seg_file_name"], label)
    cfg = make_cfg(num_classes=300, MIN_SIZE_TRAIN=(80,))
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 1000
    out = SemanticMaskFormerMapper(cfg, is_train=True)(d)
    check_contract(out, ignore=1000)
    assert np.array_equal(out["sem_seg"].numpy()[::2, ::2], label.astype(np.int64))


def test_missing_label_file_name_names_the_image(tmp_path):
    image, label = random_sample(seed=8)
    d = write_sample(tmp_path, image, label)
    del d["sem_seg_file_name"]
    with pytest.raises(KeyError, match="sem_seg_file_name") as err:
        SemanticMaskFormerMapper(make_cfg(), is_train=True)(d)
    assert d["file_name"] in str(err.value)


def test_label_size_mismatch_raises(tmp_path):
    image, label = random_sample(seed=9)
    d = write_sample(tmp_path, image, label[:, :50])
    d["width"] = 56
    with pytest.raises(ValueError, match="has size"):
        SemanticMaskFormerMapper(make_cfg(), is_train=True)(d)


def test_inference_mode_does_not_augment(tmp_path):
    image, label = random_sample(seed=10)
    d = write_sample(tmp_path, image, label)
    cfg = make_cfg(
        MIN_SIZE_TRAIN=(80,),
        RANDOM_FLIP="horizontal",
        COLOR_AUG_SSD=True,
        SIZE_DIVISIBILITY=32,
        **{"CROP.ENABLED": True, "CROP.TYPE": "absolute", "CROP.SIZE": [16, 16]},
    )
    mapper = SemanticMaskFormerMapper(cfg, is_train=False)
    np.random.seed(0)
    for _ in range(4):
        out = mapper(d)
        check_contract(out)
        assert np.array_equal(out["image"].permute(1, 2, 0).numpy(), image[:, :, ::-1])
        assert np.array_equal(out["sem_seg"].numpy(), label)
    del d["sem_seg_file_name"]
    out = mapper(d)
    assert "sem_seg" not in out and out["image"].shape == (3, 40, 56)


def test_ignore_colliding_with_a_class_is_rejected():
    cfg = make_cfg(num_classes=5)
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 3
    with pytest.raises(ValueError, match="IGNORE_VALUE"):
        SemanticMaskFormerMapper(cfg, is_train=True)


# ------------------------------------------------------------------------------------------------
# Photometric distortion
# ------------------------------------------------------------------------------------------------


def test_brightness_and_contrast_follow_the_formulas():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    out = PhotometricDistortTransform("BGR", brightness_delta=-20.5).apply_image(img)
    assert np.array_equal(out, np.clip(np.round(img.astype(np.float64) - 20.5), 0, 255))
    out = PhotometricDistortTransform("RGB", contrast_alpha=1.3).apply_image(img)
    assert np.array_equal(out, np.clip(np.round(img.astype(np.float64) * 1.3), 0, 255))
    both = PhotometricDistortTransform("RGB", brightness_delta=10.0, contrast_alpha=0.5)
    expected = np.round(np.clip(img.astype(np.float64) + 10.0, 0, 255) * 0.5)
    assert np.array_equal(both.apply_image(img), expected)


@pytest.mark.parametrize("fmt", ["RGB", "BGR"])
def test_hue_and_saturation_on_pure_colors(fmt):
    def px(rgb):
        arr = np.array([[rgb]], np.uint8)
        return arr if fmt == "RGB" else arr[:, :, ::-1]

    red, green, blue = px([255, 0, 0]), px([0, 255, 0]), px([0, 0, 255])
    # OpenCV hue units: 60 = 120 degrees, red -> green -> blue.
    assert np.array_equal(PhotometricDistortTransform(fmt, hue_delta=60).apply_image(red), green)
    assert np.array_equal(PhotometricDistortTransform(fmt, hue_delta=-60).apply_image(red), blue)
    gray = PhotometricDistortTransform(fmt, saturation_alpha=0.0).apply_image(px([200, 40, 90]))
    assert (gray == gray[..., :1]).all()
    # Saturation 1 and hue 0 change nothing but HSV rounding.
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    same = PhotometricDistortTransform(fmt, saturation_alpha=1.0, hue_delta=0).apply_image(img)
    assert np.abs(same.astype(int) - img).max() <= 8


def test_contrast_order_matters_and_segmentation_is_untouched():
    img = np.array([[[250, 120, 30], [10, 200, 100]]], np.uint8)
    first = PhotometricDistortTransform("RGB", contrast_alpha=1.5, saturation_alpha=0.6)
    last = PhotometricDistortTransform("RGB", contrast_alpha=1.5, saturation_alpha=0.6, contrast_first=False)
    contrast = PhotometricDistortTransform("RGB", contrast_alpha=1.5)
    saturation = PhotometricDistortTransform("RGB", saturation_alpha=0.6)
    assert np.array_equal(first.apply_image(img), saturation.apply_image(contrast.apply_image(img)))
    assert np.array_equal(last.apply_image(img), contrast.apply_image(saturation.apply_image(img)))
    assert not np.array_equal(first.apply_image(img), last.apply_image(img))
    seg = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(first.apply_segmentation(seg), seg)


def test_color_aug_ssd_policy_ranges_and_probabilities():
    aug = ColorAugSSD("BGR")
    img = np.zeros((4, 4, 3), np.uint8)
    np.random.seed(0)
    tfms = [aug.get_transform(img) for _ in range(400)]
    for name, low, high in (
        ("brightness_delta", -32, 32),
        ("contrast_alpha", 0.5, 1.5),
        ("saturation_alpha", 0.5, 1.5),
        ("hue_delta", -18, 18),
    ):
        values = [getattr(t, name) for t in tfms if getattr(t, name) is not None]
        assert 150 < len(values) < 250, name  # each step with probability 1/2
        assert low <= min(values) and max(values) <= high, name
    assert 150 < sum(t.contrast_first for t in tfms) < 250
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        ColorAugSSD("L")


def test_pad_value_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="INPUT.PAD_VALUE=300"):
        SemanticMaskFormerMapper(make_cfg(PAD_VALUE=300), is_train=True)


# ------------------------------------------------------------------------------------------------
# The MTA-CLIP authors' (mmseg) pipeline details
# ------------------------------------------------------------------------------------------------


def _mmseg_photometric(img_bgr, brightness, contrast, contrast_first, saturation, hue):
    """mmseg 1.x ``PhotoMetricDistortion`` with its random draws fixed (None = step skipped),
    written from its arithmetic: ``convert`` = float32 * alpha + beta, clip, ``astype(uint8)``;
    saturation and hue each convert BGR -> HSV -> BGR."""

    def convert(img, alpha=1, beta=0):
        img = img.astype(np.float32) * alpha + beta
        img = np.clip(img, 0, 255)
        return img.astype(np.uint8)

    img = img_bgr
    if brightness is not None:
        img = convert(img, beta=brightness)
    if contrast_first and contrast is not None:
        img = convert(img, alpha=contrast)
    if saturation is not None:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        img[:, :, 1] = convert(img[:, :, 1], alpha=saturation)
        img = cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
    if hue is not None:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        img[:, :, 0] = (img[:, :, 0].astype(int) + hue) % 180
        img = cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
    if not contrast_first and contrast is not None:
        img = convert(img, alpha=contrast)
    return img


@pytest.mark.parametrize(
    "params",
    [
        (-20.7, 1.37, True, 0.61, 11),
        (13.2, 0.55, False, 1.45, -17),
        (None, 1.21, False, None, 5),
        (31.9, None, True, 1.3, None),
    ],
)
@pytest.mark.parametrize("fmt", ["BGR", "RGB"])
def test_truncating_photometric_distortion_is_mmseg(params, fmt):
    rng = np.random.default_rng(7)
    img_bgr = rng.integers(0, 256, (24, 31, 3), dtype=np.uint8)
    b, c, first, s, h = params
    t = PhotometricDistortTransform(
        fmt,
        brightness_delta=b,
        contrast_alpha=c,
        contrast_first=first,
        saturation_alpha=s,
        hue_delta=h,
        truncate_each_step=True,
    )
    ours = t.apply_image(img_bgr if fmt == "BGR" else np.ascontiguousarray(img_bgr[:, :, ::-1]))
    ours_bgr = ours if fmt == "BGR" else ours[:, :, ::-1]
    expected = _mmseg_photometric(img_bgr, b, c, first, s, h)
    assert np.array_equal(ours_bgr, expected)
    rounded = PhotometricDistortTransform(
        fmt, brightness_delta=b, contrast_alpha=c, contrast_first=first, saturation_alpha=s, hue_delta=h
    ).apply_image(img_bgr if fmt == "BGR" else np.ascontiguousarray(img_bgr[:, :, ::-1]))
    assert not np.array_equal(rounded, ours)  # the default (round once at the end) differs


def test_pad_with_pixel_mean_is_the_authors_zero_after_normalization(tmp_path):
    """mmseg's SegDataPreProcessor normalizes, then pads with 0 (and labels with 255): the pad is
    the mean colour. Ours pads the uint8 image with the rounded PIXEL_MEAN (in INPUT.FORMAT order),
    so after the model's normalization the pad is within 0.5 / std of 0."""
    image, label = random_sample(seed=9, h=40, w=56)
    d = write_sample(tmp_path, image, label)
    cfg = make_cfg(SIZE_DIVISIBILITY=32, PAD_WITH_PIXEL_MEAN=True)
    cfg.MODEL.PIXEL_MEAN = [103.53, 116.28, 123.675]  # BGR order, as INPUT.FORMAT here
    cfg.MODEL.PIXEL_STD = [57.375, 57.12, 58.395]
    out = SemanticMaskFormerMapper(cfg, is_train=True)(d)
    check_contract(out)
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN)[:, None, None]
    std = torch.tensor(cfg.MODEL.PIXEL_STD)[:, None, None]
    normalized = (out["image"].float() - mean) / std
    pad_region = torch.cat([normalized[:, 40:, :].flatten(1), normalized[:, :40, 56:].flatten(1)], dim=1)
    assert pad_region.abs().max() <= (0.5 / std).max() + 1e-6
    assert out["image"][:, 50, 60].tolist() == [104, 116, 124]
    assert (out["sem_seg"][40:, :] == IGNORE).all() and (out["sem_seg"][:, 56:] == IGNORE).all()
    assert np.array_equal(out["image"][:, :40, :56].numpy(), image[:, :, ::-1].transpose(2, 0, 1))


def mmcv_rescaled_size(h, w, scale, ratio):
    """mmseg RandomResize + mmcv rescale_size, step by step: (new_h, new_w)."""
    target_long, target_short = int(scale[0] * ratio), int(scale[1] * ratio)
    factor = min(target_long / max(h, w), target_short / min(h, w))
    return int(h * float(factor) + 0.5), int(w * float(factor) + 0.5)


@pytest.mark.parametrize(
    "h, w, ratio, expected",
    [
        (480, 640, 1.0, (512, 683)),  # short side bound: 512 / 480
        (480, 640, 0.5, (256, 341)),
        (480, 640, 1.3, (665, 887)),  # target (int(2662.4), int(665.6)) = (2662, 665)
        (100, 1000, 1.0, (205, 2048)),  # long side bound: 2048 / 1000
        (37, 53, 1.999, (1023, 1465)),  # upscaling; target (4093, 1023), 53 * 1023 / 37 = 1465.4
    ],
)
def test_ratio_range_sizes_follow_mmcv_rescale_size(h, w, ratio, expected):
    from mta_clip.data.dataset_mapper import RandomRatioResize

    assert mmcv_rescaled_size(h, w, (2048, 512), ratio) == expected  # hand-checked values
    assert RandomRatioResize.output_size(h, w, (2048, 512), ratio) == expected


def test_ratio_range_resize_is_the_authors_cv2_resize(tmp_path):
    """INPUT.TRAIN_RESIZE ratio_range: ratio = low + U[0,1) (high - low) from NumPy's generator (mmseg's
    draw), size from mmcv's arithmetic, pixels equal to cv2.resize (bilinear image, nearest label)."""
    image, label = random_sample(seed=3, h=40, w=56)
    d = write_sample(tmp_path, image, label)
    cfg = make_cfg(TRAIN_RESIZE="ratio_range", TRAIN_RESIZE_SCALE=(100, 30), TRAIN_RESIZE_RATIO_RANGE=(0.5, 2.0))
    mapper = SemanticMaskFormerMapper(cfg, is_train=True)
    sizes = set()
    for seed in range(6):
        np.random.seed(seed)
        out = mapper(dict(d))
        check_contract(out)
        np.random.seed(seed)
        ratio = np.random.random_sample() * 1.5 + 0.5
        new_h, new_w = mmcv_rescaled_size(40, 56, (100, 30), ratio)
        sizes.add((new_h, new_w))
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        want_image = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        want_label = cv2.resize(label, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
        assert np.array_equal(out["image"].numpy().transpose(1, 2, 0), want_image), seed
        assert np.array_equal(out["sem_seg"].numpy(), want_label.astype(np.int64)), seed
    assert len(sizes) >= 4  # a continuous ratio, not one size
    # Mask2Former's resize (PIL) at the same size gives other pixels: the key matters.
    shortest = SemanticMaskFormerMapper(make_cfg(MIN_SIZE_TRAIN=(new_h,)), is_train=True)(dict(d))
    assert shortest["image"].shape == out["image"].shape and not torch.equal(shortest["image"], out["image"])


def test_ratio_range_resize_bad_values_are_clear_errors():
    with pytest.raises(ValueError, match="INPUT.TRAIN_RESIZE: got 'random'"):
        SemanticMaskFormerMapper(make_cfg(TRAIN_RESIZE="random"), is_train=True)
    with pytest.raises(ValueError, match=r"INPUT.TRAIN_RESIZE_RATIO_RANGE=\(2.0, 0.5\)"):
        SemanticMaskFormerMapper(make_cfg(TRAIN_RESIZE="ratio_range", TRAIN_RESIZE_RATIO_RANGE=(2.0, 0.5)), True)
    with pytest.raises(ValueError, match=r"INPUT.TRAIN_RESIZE_SCALE=\(512,\)"):
        SemanticMaskFormerMapper(make_cfg(TRAIN_RESIZE="ratio_range", TRAIN_RESIZE_SCALE=(512,)), True)
