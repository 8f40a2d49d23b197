"""mta_clip.export: ONNX (ONNX Runtime) and TorchScript files against the PyTorch model they came from.

Reduced models (one encoder layer, two decoder predictions) keep the exports fast: the toy
baseline, toy MTA-CLIP (tiny random CLIP RN50 text tower), MTA-CLIP with a reduced CLIP ViT
backbone, and one with a tiny CLIP RN101. The reference is the meta-architecture's own eval forward
(``model([{"image": ...}])``, Detectron2's ImageList padding and ``sem_seg_postprocess``), after
Detectron2's test resize (PIL) for files with the resize inside, which shares no code with the
exported graph's resize, preprocessing and semantic inference.
"""

import json
import os

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from mta_clip.export import (
    ExportCheckError,
    ExportedModel,
    SegmentationGraph,
    check_export,
    export_metadata,
    export_model,
    export_onnx,
    read_metadata,
    sample_image,
)
from tests.conftest import load_tool, toy_cfg
from tests.modeling.backbone.test_imagenet_backbone_configs import TOY_BACKBONES

IMAGENET_BACKBONES = {"vit_s": "ImageNetViT", "mit": "MixTransformer"}
SMALL = ["MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.MASK_FORMER.DEC_LAYERS", "3"]
SIZES = [(64, 96), (71, 101)]  # the second is not a multiple of 32
NAMES = ["sky", "grass", "road", "water", "car", "building"]
PALETTE = [(70, 130, 180), (0, 200, 0), (128, 64, 128), (0, 0, 230), (220, 20, 60), (70, 70, 70)]


def _model(kind, clip_files):
    torch.manual_seed({"baseline": 0, "mtaclip": 1, "vit": 2, "rn101": 3, "vit_s": 4, "mit": 5}[kind])
    if kind == "baseline":
        cfg = toy_cfg("mask2former_toy.yaml", SMALL)
    elif kind in IMAGENET_BACKBONES:  # Table 3 (left): ImageNet ViT-S/16 and MiT-B4 layouts, reduced
        name = IMAGENET_BACKBONES[kind]
        weights_key = {"ImageNetViT": "MODEL.VIT.WEIGHTS", "MixTransformer": "MODEL.MIT.WEIGHTS"}[name]
        extra = ["MODEL.BACKBONE.NAME", name, weights_key, ""] + TOY_BACKBONES[name]
        cfg = toy_cfg("mask2former_toy.yaml", SMALL + extra)
    elif kind in ("mtaclip", "rn101"):  # CLIP ResNet backbone and text tower from one tiny CLIP
        arch = {"mtaclip": "RN50", "rn101": "RN101"}[kind]
        cfg = toy_cfg(
            "mtaclip_toy.yaml",
            SMALL
            + [
                "MODEL.CLIP.WEIGHTS",
                clip_files[arch],
                "MODEL.CLIP.MODEL_NAME",
                arch,
                "MODEL.BACKBONE.NAME",
                "CLIPResNet",
                "MODEL.CLIP.TEXT.NUM_PROMPTS",
                "2",
            ],
        )
    else:
        cfg = toy_cfg(
            "mtaclip_toy.yaml",
            SMALL
            + [
                "MODEL.CLIP.WEIGHTS",
                clip_files["ViT-B-16"],
                "MODEL.CLIP.MODEL_NAME",
                "ViT-B-16",
                "MODEL.BACKBONE.NAME",
                "CLIPViT",
                "MODEL.CLIP.VIT.OUT_INDICES",
                "[0, 1, 2, 3]",
                "MODEL.CLIP.VIT.PYRAMID_NORM",
                "BN",
                "MODEL.CLIP.TEXT.NUM_PROMPTS",
                "2",
            ],
        )
    model = build_model(cfg).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics; sharper masks and classes, so that the
        for m in model.modules():  # labels vary over the image as a trained model's do
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        # random decoders give every query the same favourite class: center the class logits over
        # the queries of one image, so that the labels vary over the image as a trained model's do
        predictor = model.sem_seg_head.predictor
        predictor.class_embed.weight.mul_(3.0)
        image = _image((64, 96), seed=99)[0].permute(2, 0, 1).float()
        logits = []
        hook = predictor.class_embed.register_forward_hook(lambda mod, inp, out: logits.append(out))
        model([{"image": image if cfg.INPUT.FORMAT == "BGR" else image.flip(0)}])
        hook.remove()
        predictor.class_embed.bias.sub_(logits[-1][0].mean(0))
    return cfg, model


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory, tiny_clip_file):
    tool = load_tool("make_tiny_clip")
    d = tmp_path_factory.mktemp("export_clip")
    vit = tool.make_tiny_clip(str(d / "ViT-B-16.pt"), "ViT-B-16", "torchscript", seed=2, vision_layers=4)
    rn101 = tool.make_tiny_clip(str(d / "RN101.pt"), "RN101", "torchscript", seed=3)
    return {"RN50": tiny_clip_file, "ViT-B-16": vit, "RN101": rn101}


def _test_size(cfg):
    return (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)


# One dynamic ONNX file (batch, height, width) per model (Detectron2 ResNet, CLIP RN50, CLIP ViT-B/16,
# ImageNet ViT-S/16, MiT-B4 layouts). The MTA-CLIP and MiT files have the test resize inside (the
# three-part chained export); the others run the model at the given size.
EXPORTS = {"baseline": False, "mtaclip": True, "vit": False, "vit_s": False, "mit": True}


@pytest.fixture(scope="module", params=sorted(EXPORTS))
def exported(request, clip_files, tmp_path_factory):
    """(cfg, model, onnx path, test resize inside?); the export's own check ran at 64x96 and 67x89."""
    cfg, model = _model(request.param, clip_files)
    path = str(tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx")
    meta = export_metadata(cfg, NAMES, PALETTE, 255, note="test")
    resize = EXPORTS[request.param]
    test_size = _test_size(cfg) if resize else None
    report = export_model(
        model, path, "onnx", cfg.INPUT.FORMAT, size=(64, 96), metadata=meta, check_size=(67, 89), test_size=test_size
    )
    assert [c["size"] for c in report["checks"]] == [[64, 96], [67, 89]]
    assert all(c["label_mismatch"] == 0 and c["max_abs_prob_diff"] < 1e-4 for c in report["checks"])
    return cfg, model, path, resize


def _image(size, seed):
    """A (1, H, W, 3) uint8 BGR image of four flat colored quadrants plus noise (structure gives the
    random models spatially varying labels)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    colors = torch.randint(0, 256, (4, 3), generator=g)
    img = torch.empty((h, w, 3))
    img[: h // 2, : w // 2], img[: h // 2, w // 2 :] = colors[0], colors[1]
    img[h // 2 :, : w // 2], img[h // 2 :, w // 2 :] = colors[2], colors[3]
    img = img + torch.randn((h, w, 3), generator=g) * 20
    return img.clamp(0, 255).round().to(torch.uint8)[None]


def _reference(cfg, model, image_bhwc_uint8, test_resize=False):
    """The meta-architecture's eval forward on the (model-format) CHW image -> (probs, labels) at the
    image's size; ``test_resize``: the image resized first by Detectron2's test-mapper resize (PIL)."""
    from detectron2.data.transforms import ResizeShortestEdge

    img = image_bhwc_uint8[0].numpy()
    if cfg.INPUT.FORMAT == "RGB":
        img = img[:, :, ::-1]
    height, width = img.shape[:2]
    if test_resize:
        resize = ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        img = resize.get_transform(img).apply_image(np.ascontiguousarray(img))
    chw = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()
    with torch.no_grad():
        scores = model([{"image": chw, "height": height, "width": width}])[0]["sem_seg"]
    return (scores / scores.sum(0, keepdim=True)).numpy(), scores.argmax(0).numpy()


def _assert_close(probs, labels, ref_probs, ref_labels):
    assert probs.shape == ref_probs.shape and labels.shape == ref_labels.shape
    np.testing.assert_allclose(probs, ref_probs, atol=1e-4, rtol=0)
    assert (labels == ref_labels).mean() >= 0.999
    assert ref_probs.std(axis=(1, 2)).max() > 1e-3  # the distributions vary over the image


def test_onnx_matches_pytorch(exported):
    """Without the test resize in the file: the model's forward at the given size (SIZES: one not a
    multiple of 32), within 1e-4. With it, the file takes the original image and answers at its
    size as Predictor does: Detectron2's resize (PIL) + the model's forward, at sizes that need an
    upscale (50x70 -> 96x134), a downscale (200x130 -> 148x96) and none (96x128)."""
    cfg, model, path, resize = exported
    runner = ExportedModel(path)
    assert runner.format == "onnx"
    sizes = [(50, 70), (200, 130), (96, 128)] if resize else SIZES
    for seed, (h, w) in enumerate(sizes):
        image = _image((h, w), seed=10 + seed)
        probs, labels = runner(image.numpy())
        assert labels.dtype == np.int64 and probs.shape == (1, len(NAMES), h, w)
        _assert_close(probs[0], labels[0], *_reference(cfg, model, image, test_resize=resize))


def test_onnx_batch_is_dynamic(exported):
    """Two different images in one call give what each gives alone."""
    _, _, path, _ = exported
    runner = ExportedModel(path)
    images = np.concatenate([_image((71, 101), seed=40).numpy(), _image((71, 101), seed=41).numpy()])
    probs, labels = runner(images)
    assert probs.shape[0] == 2 and labels.shape == (2, 71, 101)
    for i in range(2):
        p, lab = runner(images[i : i + 1])
        np.testing.assert_allclose(probs[i], p[0], atol=1e-5, rtol=0)
        assert (labels[i] == lab[0]).mean() >= 0.999
    assert np.abs(probs[0] - probs[1]).max() > 1e-3  # two different answers, not one broadcast


def test_onnx_metadata_round_trip(exported):
    import onnx

    cfg, _, path, resize = exported
    meta = read_metadata(path)
    assert meta["class_names"] == NAMES and meta["palette"] == [list(c) for c in PALETTE]
    assert meta["ignore_label"] == 255 and meta["note"] == "test" and meta["dynamic"] is True
    assert meta["image_size"] is None and meta["test_resize"] is resize
    assert meta["min_image_size"] == (1 if resize else 64)
    assert meta["meta_architecture"] == cfg.MODEL.META_ARCHITECTURE
    assert meta["input"]["dtype"] == "uint8" and meta["input"]["channel_order"] == "BGR"
    props = {p.key: p.value for p in onnx.load(path).metadata_props}  # plain onnx, no project code
    assert json.loads(props["mta_clip"])["class_names"] == NAMES


def test_mtaclip_text_features_are_constants(exported):
    """The file holds no text encoder: one input (the image), none of the text tower's weights (its
    49408-row token embedding, the learned contexts), fewer stored numbers than the PyTorch model."""
    import onnx
    from onnx import numpy_helper

    cfg, model, path, _ = exported
    proto = onnx.load(path)
    assert [i.name for i in proto.graph.input] == ["image"]
    encoder = getattr(model, "text_encoder", None)
    if encoder is None:
        return
    arrays = [numpy_helper.to_array(t) for t in proto.graph.initializer]
    assert not any(a.shape[:1] == (49408,) for a in arrays)
    ctx = encoder.prompt_learner.ctx.detach().numpy()
    assert not any(a.shape == ctx.shape and np.allclose(a, ctx) for a in arrays)
    stored = sum(a.size for a in arrays)
    encoder_params = sum(p.numel() for p in encoder.parameters())
    assert stored < sum(p.numel() for p in model.parameters()) - encoder_params + 100_000


@pytest.mark.parametrize("kind", ["baseline", "mtaclip", "vit", "rn101"])
def test_fixed_size_files_match_pytorch(kind, clip_files, tmp_path):
    """TorchScript traces at SIZES (the second with the test resize inside and a float32 input);
    for the CLIP RN101 model a fixed-size ONNX file with the test resize instead (its backbone's
    TorchScript trace is the RN50's code)."""
    cfg, model = _model(kind, clip_files)
    for fmt in ["onnx"] if kind == "rn101" else ["torchscript"]:
        for i, (h, w) in enumerate(SIZES[1:] if kind == "rn101" else SIZES, start=1 if kind == "rn101" else 0):
            path = str(tmp_path / f"{kind}_{h}x{w}.{fmt}")
            resize = i == 1
            export_model(
                model,
                path,
                fmt,
                cfg.INPUT.FORMAT,
                size=(h, w),
                dynamic=False,
                metadata=export_metadata(cfg, NAMES, PALETTE),
                input_dtype="float32" if i else "uint8",
                test_size=_test_size(cfg) if resize else None,
            )
            runner = ExportedModel(path)
            assert runner.format == fmt
            assert runner.metadata["class_names"] == NAMES and runner.metadata["image_size"] == [h, w]
            assert runner.metadata["test_resize"] is resize
            image = _image((h, w), seed=20 + i)
            probs, labels = runner(image.float() if i else image)
            reference = _reference(cfg, model, image, test_resize=resize)
            _assert_close(probs[0], labels[0], *reference)
        if fmt == "torchscript":
            with pytest.raises(Exception, match=r"traced at a fixed size \(H, W\) = \(71, 101\)"):
                runner(sample_image((64, 96), dtype="float32"))


def test_unsupported_cases_are_clear_errors(clip_files, tmp_path):
    cfg, model = _model("baseline", clip_files)
    path = str(tmp_path / "x.ts")
    with pytest.raises(ValueError, match="TorchScript export serves one image size"):
        export_model(model, path, "torchscript", size=(64, 64), dynamic=True)
    with pytest.raises(ValueError, match=r"both sides must be >= 64"):
        export_model(model, str(tmp_path / "x.onnx"), "onnx", size=(48, 64), dynamic=True)
    with pytest.raises(ValueError, match="format must be one of"):
        export_model(model, path, "tflite", size=(64, 64), dynamic=False)
    with pytest.raises(ValueError, match="test_size must be"):
        export_model(model, path, "torchscript", size=(64, 64), dynamic=False, test_size=(0, 100))
    onnx_path = str(tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="sample batch of 2 or more"):
        export_onnx(SegmentationGraph(model), onnx_path, sample_image((64, 64)), dynamic=True)
    with pytest.raises(ValueError, match=r"needs SegmentationGraph\(\.\.\., dynamic=True\)"):
        export_onnx(SegmentationGraph(model, test_size=(96, 224)), onnx_path, sample_image((64, 64), 2), dynamic=True)
    from mta_clip.evaluation import SemSegTTA

    tta = SemSegTTA(toy_cfg("mask2former_toy.yaml", ["TEST.AUG.ENABLED", "True"]), model)
    with pytest.raises(ValueError, match="test-time augmentation"):
        export_model(tta, path, "torchscript", size=(64, 64), dynamic=False)
    assert not os.path.exists(path) and not os.path.exists(onnx_path)


def test_check_refuses_a_file_that_disagrees(clip_files, tmp_path):
    """A file exported from other weights must fail the check (and the tool writes nothing)."""
    cfg, model = _model("baseline", clip_files)
    path = str(tmp_path / "m.ts")
    export_model(model, path, "torchscript", cfg.INPUT.FORMAT, size=(64, 64), dynamic=False)
    other = SegmentationGraph(_model("mtaclip", clip_files)[1], cfg.INPUT.FORMAT)
    with pytest.raises(ExportCheckError, match="labels differ"):
        check_export(other, path, [sample_image((64, 64))])
    same = check_export(SegmentationGraph(model, cfg.INPUT.FORMAT), path, [sample_image((64, 64))])
    assert same[0]["label_mismatch"] == 0.0 and same[0]["max_abs_prob_diff"] < 1e-5
