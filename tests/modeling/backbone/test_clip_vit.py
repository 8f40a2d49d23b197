"""CLIPViT against open_clip's own visual tower on tiny random CLIPs."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

from mta_clip.modeling.backbone.clip_vit import CLIPViT
from mta_clip.modeling.clip.weights import read_clip_weights
from tests.conftest import open_clip_reference
from tests.modeling.backbone.conftest import make_cfg


def test_registered_name():
    assert BACKBONE_REGISTRY.get("CLIPViT") is CLIPViT


def test_vit_equals_open_clip_blocks(ckpts):
    bb = build_backbone(make_cfg("CLIPViT", ckpts["ViT-B-16"], **{"VIT.PYRAMID_NORM": "BN"})).eval()
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
    bb = build_backbone(make_cfg("CLIPViT", ckpts["ViT-B-16"], (128, 192), **{"VIT.PYRAMID_NORM": "BN"})).eval()
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
    assert isinstance(bb.pyramid["res2"][1], torch.nn.SyncBatchNorm)
    assert {k: (v.channels, v.stride) for k, v in bb.output_shape().items()} == {
        "res2": (64, 4), "res3": (64, 8), "res4": (64, 16), "res5": (64, 32)}
    out = bb(torch.randn(2, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (2, 64, 16, 24), "res3": (2, 64, 8, 12), "res4": (2, 64, 4, 6), "res5": (2, 64, 2, 3)}
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
    bb = build_backbone(make_cfg("CLIPViT", ckpts["ViT-B-16"], **{
        "VIT.OUT_INDICES": [1, 2, 4, 6], "VIT.OUT_FEATURES": ["res3", "res4"], "VIT.PYRAMID_NORM": "BN"}))
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
