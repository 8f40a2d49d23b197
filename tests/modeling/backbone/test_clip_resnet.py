"""CLIPResNet against open_clip's own visual tower on tiny random CLIPs."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

from mta_clip.modeling.backbone.clip_resnet import CLIPResNet
from mta_clip.modeling.clip.weights import read_clip_weights
from tests.conftest import open_clip_reference
from tests.modeling.backbone.conftest import make_cfg


def test_registered_name():
    assert BACKBONE_REGISTRY.get("CLIPResNet") is CLIPResNet


@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_resnet_equals_open_clip_trunk(ckpts, norm):
    cfg = make_cfg("CLIPResNet", ckpts["RN50"], **{"RESNET.NORM": norm})
    bb = build_backbone(cfg).eval()
    ref = open_clip_reference(ckpts["RN50"])
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        out = bb(x)
        expected = ref.visual.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
    for name, exp in zip(["res2", "res3", "res4", "res5"], expected["image_intermediates"]):
        assert out[name].shape == exp.shape
        torch.testing.assert_close(out[name], exp, rtol=1e-5, atol=1e-5)
    assert out["res5"].abs().mean() > 1e-3  # a real comparison, not of zeros


def test_resnet_shapes_names_rn101(ckpts):
    cfg = make_cfg("CLIPResNet", ckpts["RN101"], **{"RESNET.NORM": "FrozenBN"})
    bb = build_backbone(cfg, ShapeSpec(channels=3))
    assert len(bb.layer3) == 23 and len(bb.layer1) == 3
    shapes = bb.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "res2": (32, 4),
        "res3": (64, 8),
        "res4": (128, 16),
        "res5": (256, 32),
    }
    out = bb(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (1, 32, 16, 24),
        "res3": (1, 64, 8, 12),
        "res4": (1, 128, 4, 6),
        "res5": (1, 256, 2, 3),
    }
    # names under the backbone are the CLIP file's visual.* names (a prefix change)
    sd, _ = read_clip_weights(ckpts["RN101"])
    visual = {k[len("visual.") :] for k in sd if k.startswith("visual.") and not k.startswith("visual.attnpool.")}
    ours = set(bb.state_dict())
    assert ours <= visual
    assert visual - ours == {k for k in visual if k.endswith("num_batches_tracked")}  # FrozenBN keeps none
    for k, v in bb.state_dict().items():
        assert torch.equal(v, sd["visual." + k]), k


def test_resnet_official_shapes_rn50():
    """Real RN50 widths (random init): 256/512/1024/2048 channels."""
    bb = CLIPResNet(layers=(3, 4, 6, 3), width=64, embed_dim=1024, out_features=("res2", "res3", "res4", "res5"))
    shapes = bb.output_shape()
    assert [shapes[f"res{i}"].channels for i in range(2, 6)] == [256, 512, 1024, 2048]
    assert [shapes[f"res{i}"].stride for i in range(2, 6)] == [4, 8, 16, 32]


def test_resnet_norm_and_freeze(ckpts):
    bb = build_backbone(make_cfg("CLIPResNet", ckpts["RN50"], **{"RESNET.NORM": "SyncBN", "RESNET.FREEZE_AT": 2}))
    assert isinstance(bb.bn1, FrozenBatchNorm2d) and isinstance(bb.layer1[0].bn2, FrozenBatchNorm2d)
    assert isinstance(bb.layer2[0].bn2, torch.nn.SyncBatchNorm)
    assert not any(p.requires_grad for p in bb.conv1.parameters())
    assert not any(p.requires_grad for p in bb.layer1.parameters())
    assert all(p.requires_grad for p in bb.layer2.parameters())
    bb = build_backbone(make_cfg("CLIPResNet", ckpts["RN50"], **{"RESNET.NORM": "BN"}))
    assert type(bb.layer4[2].bn3) is torch.nn.BatchNorm2d and bb.bn1.weight.requires_grad
    with pytest.raises(ValueError, match="MODEL.CLIP.RESNET.NORM"):
        build_backbone(make_cfg("CLIPResNet", ckpts["RN50"], **{"RESNET.NORM": "GN"}))
    with pytest.raises(ValueError, match="FREEZE_AT"):
        build_backbone(make_cfg("CLIPResNet", ckpts["RN50"], **{"RESNET.FREEZE_AT": 6}))


def test_resnet_attention_pool(ckpts):
    ref = open_clip_reference(ckpts["RN50"])
    feats = ["res4", "res5", "attnpool"]
    # same grid as pretraining: the pooled token is CLIP's image embedding
    bb = build_backbone(make_cfg("CLIPResNet", ckpts["RN50"], **{"RESNET.OUT_FEATURES": feats})).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        pooled, dense = bb.attention_pool(bb(x)["res5"])
        torch.testing.assert_close(pooled, ref.encode_image(x), rtol=1e-5, atol=1e-5)
    assert dense.shape == (2, 32, 7, 7) and bb.output_shape()["attnpool"].channels == 32

    # training resolution 256 -> 8x8 pool grid at load; input 160x224 -> 5x7 at run time
    bb = build_backbone(make_cfg("CLIPResNet", ckpts["RN50"], (256, 256), **{"RESNET.OUT_FEATURES": feats})).eval()
    ckpt_pos = ref.visual.attnpool.positional_embedding.detach()

    def bicubic(pos, size):
        grid = pos[1:].reshape(1, 7, 7, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=size, mode="bicubic", align_corners=False)
        return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(size[0] * size[1], -1)])

    torch.testing.assert_close(bb.attnpool.positional_embedding.detach(), bicubic(ckpt_pos, (8, 8)))
    x = torch.randn(1, 3, 160, 224)
    with torch.no_grad():
        out = bb(x)
        pooled, _ = bb.attention_pool(out["res5"])
        stored = bb.attnpool.positional_embedding.detach()
        grid = stored[1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(5, 7), mode="bicubic", align_corners=False)
        ref.visual.attnpool.positional_embedding.data = torch.cat(
            [stored[:1], grid.permute(0, 2, 3, 1).reshape(35, -1)]
        )
        expected = ref.visual.attnpool(out["res5"])
    assert out["attnpool"].shape == (1, 32, 5, 7)
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)


def test_resnet_default_norm_is_the_authors_trained_batchnorm(ckpts):
    """The authors' CLIPResNetWithAttention uses plain nn.BatchNorm2d in training mode: batch
    statistics of the local batch normalize, running stats move by momentum 0.1 (unbiased var),
    affine params train. Checked on the stem's first BN against those formulas."""
    bb = build_backbone(make_cfg("CLIPResNet", ckpts["RN50"]), ShapeSpec(channels=3))
    norms = [m for m in bb.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(type(m) is torch.nn.BatchNorm2d for m in norms)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in bb.modules())
    assert all(p.requires_grad for m in norms for p in m.parameters())
    seen = {}
    bb.bn1.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0].detach().clone(), y=out.detach().clone()))
    mean0, var0 = bb.bn1.running_mean.clone(), bb.bn1.running_var.clone()
    bb.train()
    bb(torch.randn(2, 3, 64, 64))
    x = seen["x"].double()
    mu = x.mean(dim=(0, 2, 3))
    var_b = x.var(dim=(0, 2, 3), unbiased=False)
    expected = (x - mu[None, :, None, None]) / torch.sqrt(var_b[None, :, None, None] + bb.bn1.eps)
    expected = expected * bb.bn1.weight.double()[None, :, None, None] + bb.bn1.bias.double()[None, :, None, None]
    torch.testing.assert_close(seen["y"].double(), expected, atol=1e-4, rtol=1e-4)
    n = x.numel() / x.shape[1]
    torch.testing.assert_close(bb.bn1.running_mean.double(), 0.9 * mean0.double() + 0.1 * mu, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        bb.bn1.running_var.double(), 0.9 * var0.double() + 0.1 * var_b * n / (n - 1), atol=1e-5, rtol=1e-5
    )
