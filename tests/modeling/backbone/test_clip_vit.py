"""CLIPViT against open_clip's own visual tower on tiny random CLIPs."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

from mta_clip.modeling.backbone.clip_vit import CLIPViT
from mta_clip.modeling.clip.weights import read_clip_weights
from tests.conftest import open_clip_reference
from tests.modeling.backbone.conftest import make_cfg

# CLIP's own ViT arithmetic (open_clip parity); the defaults are DenseCLIP's (the MTA-CLIP authors')
CLIP_VIT = {
    "VIT.PYRAMID_PRE_NORM": False,
    "VIT.CLASS_EMBED_TWICE": False,
    "VIT.POS_EMBED_INTERPOLATION": "bicubic",
    "VIT.DROP_PATH_RATE": 0.0,
}


def test_registered_name():
    assert BACKBONE_REGISTRY.get("CLIPViT") is CLIPViT


def test_vit_equals_open_clip_blocks(ckpts):
    bb = build_backbone(make_cfg("CLIPViT", ckpts["ViT-B-16"], **{"VIT.PYRAMID_NORM": "BN", **CLIP_VIT})).eval()
    ref = open_clip_reference(ckpts["ViT-B-16"])
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = bb.block_features(x)
        exp = ref.visual.forward_intermediates(x, indices=[3, 5, 7, 11], intermediates_only=True)
    for idx, e in zip([3, 5, 7, 11], exp["image_intermediates"]):
        assert ours[idx].shape == e.shape == (2, 64, 14, 14)
        torch.testing.assert_close(ours[idx], e, rtol=1e-5, atol=1e-5)
    assert len(bb.transformer.resblocks) == 12


def test_vit_pos_embed_interpolation(ckpts):
    """Load time: the CLIP file's grid 14x14 -> training grid 8x12; run time: -> the input's grid."""
    ref = open_clip_reference(ckpts["ViT-B-16"])
    bb = build_backbone(
        make_cfg("CLIPViT", ckpts["ViT-B-16"], (128, 192), **{"VIT.PYRAMID_NORM": "BN", **CLIP_VIT})
    ).eval()
    ckpt = ref.visual.positional_embedding.detach()

    def bicubic(pos, old, new):
        grid = pos[1:].reshape(1, old[0], old[1], -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=new, mode="bicubic", align_corners=False)
        return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(new[0] * new[1], -1)])

    stored = bb.positional_embedding.detach()
    torch.testing.assert_close(stored, bicubic(ckpt, (14, 14), (8, 12)))
    x = torch.randn(1, 3, 64, 96)
    ref.visual.positional_embedding.data = bicubic(stored, (8, 12), (4, 6))
    with torch.no_grad():
        ours = bb.block_features(x)
        exp = ref.visual.forward_intermediates(x, indices=[3, 5, 7, 11], intermediates_only=True)
    for idx, e in zip([3, 5, 7, 11], exp["image_intermediates"]):
        torch.testing.assert_close(ours[idx], e, rtol=1e-5, atol=1e-5)


def test_vit_pyramid_shapes_and_gradients(ckpts):
    bb = build_backbone(make_cfg("CLIPViT", ckpts["ViT-B-16"]))  # default SyncBN: plain BN in one process
    assert isinstance(bb.pyramid["res2"][0], torch.nn.GroupNorm) and bb.pyramid["res2"][0].num_groups == 1
    assert isinstance(bb.pyramid["res2"][2], torch.nn.SyncBatchNorm)
    assert {k: (v.channels, v.stride) for k, v in bb.output_shape().items()} == {
        "res2": (64, 4),
        "res3": (64, 8),
        "res4": (64, 16),
        "res5": (64, 32),
    }
    out = bb(torch.randn(2, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (2, 64, 16, 24),
        "res3": (2, 64, 8, 12),
        "res4": (2, 64, 4, 6),
        "res5": (2, 64, 2, 3),
    }
    sum(v.mean() for v in out.values()).backward()
    assert bb.pyramid["res2"][0].weight.grad is not None and bb.conv1.weight.grad is not None
    assert bb.transformer.resblocks[11].mlp.c_fc.weight.grad is not None
    out = bb(torch.randn(1, 3, 48, 80))  # any multiple of 16 (odd 3x5 grid)
    assert out["res2"].shape[-2:] == (12, 20) and out["res5"].shape[-2:] == (1, 2)
    with pytest.raises(ValueError, match="multiples of 16"):
        bb(torch.randn(1, 3, 56, 64))
    sd, _ = read_clip_weights(ckpts["ViT-B-16"])
    for k, v in bb.state_dict().items():
        if not k.startswith("pyramid."):
            assert k in ("positional_embedding",) or torch.equal(v, sd["visual." + k]), k


def test_vit_fewer_blocks_and_errors(ckpts):
    bb = build_backbone(
        make_cfg(
            "CLIPViT",
            ckpts["ViT-B-16"],
            **{"VIT.OUT_INDICES": [1, 2, 4, 6], "VIT.OUT_FEATURES": ["res3", "res4"], "VIT.PYRAMID_NORM": "BN"},
        )
    )
    assert len(bb.transformer.resblocks) == 5 and set(bb.pyramid.keys()) == {"res3", "res4"}
    assert set(bb(torch.randn(1, 3, 32, 32))) == {"res3", "res4"}
    with pytest.raises(ValueError, match="OUT_INDICES"):
        build_backbone(make_cfg("CLIPViT", ckpts["ViT-B-16"], **{"VIT.OUT_INDICES": [3, 5, 7, 12]}))
    with pytest.raises(ValueError, match="use CLIPResNet"):
        build_backbone(make_cfg("CLIPViT", ckpts["RN50"]))
    with pytest.raises(ValueError, match="use CLIPViT"):
        build_backbone(make_cfg("CLIPResNet", ckpts["ViT-B-16"]))


def test_vit_b16_official_shapes():
    """Real ViT-B/16 widths, random init, 2 blocks used."""
    bb = CLIPViT(width=768, layers=12, heads=12, image_size=(64, 64), out_indices=(0, 0, 1, 1), pyramid_norm="BN")
    assert len(bb.transformer.resblocks) == 2
    assert all(s.channels == 768 for s in bb.output_shape().values())


def _group_norm_1(x, gn):
    return F.group_norm(x, 1, gn.weight, gn.bias, gn.eps)


def test_vit_default_is_denseclip_forward(ckpts):
    """DenseCLIP's CLIPVisionTransformer (the authors' ViT-B/16), written from its arithmetic with
    our parameters: bilinear pos resize at load (14x14 -> 8x8) and at run time (-> 4x6), class
    token = class_embedding + (pos[0] + class_embedding), fpn1..fpn4 = GN(1) then
    [convT, BN, GELU, convT] / [convT] / [] / [maxpool]."""
    bb = build_backbone(make_cfg("CLIPViT", ckpts["ViT-B-16"], (128, 128), **{"VIT.PYRAMID_NORM": "BN"})).eval()
    for m in bb.pyramid.modules():  # non-trivial norm parameters and statistics
        if isinstance(m, (torch.nn.GroupNorm, torch.nn.BatchNorm2d)):
            torch.nn.init.normal_(m.weight, 1.0, 0.3)
            torch.nn.init.normal_(m.bias, 0.0, 0.3)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    sd, _ = read_clip_weights(ckpts["ViT-B-16"])
    ckpt_pos = sd["visual.positional_embedding"].float()
    c = ckpt_pos.shape[1]
    spatial = F.interpolate(ckpt_pos[1:].reshape(1, 14, 14, c).permute(0, 3, 1, 2), size=(8, 8), mode="bilinear")
    loaded = torch.cat([ckpt_pos[:1], spatial.reshape(c, 64).permute(1, 0)], dim=0)
    torch.testing.assert_close(bb.positional_embedding.detach(), loaded)

    img = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ours = bb(img)
        x = F.conv2d(img, bb.conv1.weight, stride=16)
        b, _, h, w = x.shape
        x = x.reshape(b, c, -1).permute(0, 2, 1)
        cls = bb.class_embedding + torch.zeros(b, 1, c)
        x = torch.cat([cls, x], dim=1)
        pos = bb.positional_embedding
        cls_pos = pos[0, :] + bb.class_embedding
        spatial_pos = F.interpolate(pos[1:].reshape(1, 8, 8, c).permute(0, 3, 1, 2), size=(h, w), mode="bilinear")
        spatial_pos = spatial_pos.reshape(1, c, h * w).permute(0, 2, 1)
        x = x + torch.cat([cls_pos.reshape(1, 1, c), spatial_pos], dim=1)
        x = F.layer_norm(x, (c,), bb.ln_pre.weight, bb.ln_pre.bias, bb.ln_pre.eps)
        feats = []
        for i, blk in enumerate(bb.transformer.resblocks):
            x = blk(x)
            if i in (3, 5, 7, 11):
                feats.append(x[:, 1:, :].permute(0, 2, 1).reshape(b, -1, h, w))
        p = bb.pyramid
        f1 = F.conv_transpose2d(_group_norm_1(feats[0], p["res2"][0]), p["res2"][1].weight, p["res2"][1].bias, stride=2)
        bn = p["res2"][2]
        f1 = F.batch_norm(f1, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        f1 = F.conv_transpose2d(F.gelu(f1), p["res2"][4].weight, p["res2"][4].bias, stride=2)
        f2 = F.conv_transpose2d(_group_norm_1(feats[1], p["res3"][0]), p["res3"][1].weight, p["res3"][1].bias, stride=2)
        f3 = _group_norm_1(feats[2], p["res4"][0])
        f4 = F.max_pool2d(_group_norm_1(feats[3], p["res5"][0]), kernel_size=2, stride=2)
    for name, exp in zip(("res2", "res3", "res4", "res5"), (f1, f2, f3, f4)):
        torch.testing.assert_close(ours[name], exp, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("unit", ["token", "sample"])
def test_vit_drop_path_is_denseclip(ckpts, unit):
    """DenseCLIP's blocks run on (N, B, C) tokens with timm's drop_path (one draw along dim 0, i.e.
    per token position) on the attention and the MLP branch, rates linspace(0, rate, layers).
    "sample" is the same with the draw per image."""
    import timm.layers

    rate = 0.5
    bb = build_backbone(
        make_cfg(
            "CLIPViT",
            ckpts["ViT-B-16"],
            (64, 64),
            **{"VIT.PYRAMID_NORM": "BN", "VIT.DROP_PATH_RATE": rate, "VIT.DROP_PATH_UNIT": unit},
        )
    ).train()
    rates = [rate * i / 11 for i in range(12)]
    assert [blk.ls_1.drop_prob for blk in list(bb.transformer.resblocks)[1:]] == pytest.approx(rates[1:])
    assert isinstance(bb.transformer.resblocks[0].ls_1, torch.nn.Identity)  # rate 0 for the first block
    seen = {}
    bb.ln_pre.register_forward_hook(lambda mod, inp, out: seen.update(tokens=out.detach().clone()))
    img = torch.randn(3, 3, 64, 64)
    torch.manual_seed(123)
    with torch.no_grad():
        ours = bb.block_features(img)
        torch.manual_seed(123)
        x = seen["tokens"].permute(1, 0, 2) if unit == "token" else seen["tokens"]  # their (N, B, C) layout
        for i, blk in enumerate(bb.transformer.resblocks):
            as_bnc = (lambda t: t.permute(1, 0, 2)) if unit == "token" else (lambda t: t)
            attn = as_bnc(blk.attention(q_x=blk.ln_1(as_bnc(x))))
            x = x + timm.layers.drop_path(attn, rates[i], True)
            x = x + timm.layers.drop_path(blk.mlp(blk.ln_2(x)), rates[i], True)
            if i == 11:
                x = as_bnc(x)
                expected = x[:, 1:].transpose(1, 2).reshape(3, -1, 4, 4)
                torch.testing.assert_close(ours[11], expected, rtol=1e-4, atol=1e-4)
    bb.eval()
    with torch.no_grad():
        assert not torch.allclose(bb.block_features(img)[11], ours[11], atol=1e-3)  # drop path acted in training
