"""ImageNetViT (ViT-S/16, Table 3 left) against timm's VisionTransformer with the same random weights."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from mta_clip.config import add_mtaclip_config
from mta_clip.modeling.backbone.imagenet_vit import ImageNetViT

BLOCKS = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def timm_vit():
    """ViT-S widths (384, 6 heads), 4 blocks, 224 grid; random weights far from the init."""
    torch.manual_seed(0)
    ref = VisionTransformer(
        img_size=224, patch_size=16, embed_dim=384, depth=4, num_heads=6, dynamic_img_size=True
    ).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.05)
    return ref


def _ours(state_dict, image_size=(224, 224), **kwargs):
    return ImageNetViT(
        depth=4, image_size=image_size, out_indices=BLOCKS, pyramid_norm="BN", weights=state_dict, **kwargs
    ).eval()


def _timm_features(ref, x):
    with torch.no_grad():
        return ref.forward_intermediates(x, indices=BLOCKS, norm=False, intermediates_only=True)


def test_registered():
    assert BACKBONE_REGISTRY.get("ImageNetViT") is ImageNetViT


@pytest.mark.parametrize("size", [(224, 224), (256, 320)], ids=["224", "256x320"])
def test_token_features_equal_timm(timm_vit, size):
    """224: the pretraining grid; 256x320: positional embedding resized at run time (timm: dynamic_img_size)."""
    ours = _ours(timm_vit.state_dict())  # head / final norm of the timm state dict are ignored
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        got = ours.block_features(x)
    for i, exp in zip(BLOCKS, _timm_features(timm_vit, x)):
        assert got[i].shape == exp.shape == (2, 384, size[0] // 16, size[1] // 16)
        torch.testing.assert_close(got[i], exp, rtol=1e-5, atol=1e-5)
    assert exp.abs().mean() > 0.1


def test_positional_embedding_resized_at_load_as_timm(timm_vit):
    ours = _ours(timm_vit.state_dict(), image_size=(256, 320))
    expected = resample_abs_pos_embed(timm_vit.pos_embed.detach(), new_size=(16, 20), num_prefix_tokens=1)
    torch.testing.assert_close(ours.pos_embed.detach(), expected)
    x = torch.randn(1, 3, 256, 320)
    with torch.no_grad():
        got = ours.block_features(x)[3]
    torch.testing.assert_close(got, _timm_features(timm_vit, x)[3], rtol=1e-5, atol=1e-5)


def test_default_shapes_are_timm_vit_small():
    """Default keys = ViT-S/16: every trunk tensor has the name and shape of timm's vit_small_patch16."""
    import timm

    cfg = get_cfg()
    add_mtaclip_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "ImageNetViT"
    cfg.MODEL.VIT.IMAGE_SIZE = [224, 224]
    ours = build_backbone(cfg)
    ref = timm.create_model("vit_small_patch16_224", pretrained=False).state_dict()
    trunk = {k: tuple(v.shape) for k, v in ours.state_dict().items() if not k.startswith("pyramid.")}
    assert trunk == {k: tuple(v.shape) for k, v in ref.items() if not k.startswith(("norm.", "head."))}
    assert {k: (v.channels, v.stride) for k, v in ours.output_shape().items()} == {
        "res2": (384, 4),
        "res3": (384, 8),
        "res4": (384, 16),
        "res5": (384, 32),
    }
    assert isinstance(ours.pyramid["res2"][0], torch.nn.GroupNorm)  # MODEL.VIT.PYRAMID_PRE_NORM, as the CLIP ViT
    rates = [b.drop_path.drop_prob for b in ours.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.1, 12))


def test_pyramid_outputs_gradients_and_drop_path(timm_vit):
    ours = _ours(timm_vit.state_dict(), drop_path_rate=0.5).train()
    out = ours(torch.randn(2, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (2, 384, 16, 24),
        "res3": (2, 384, 8, 12),
        "res4": (2, 384, 4, 6),
        "res5": (2, 384, 2, 3),
    }
    sum(v.mean() for v in out.values()).backward()
    assert ours.pyramid["res2"][0].weight.grad is not None and ours.patch_embed.proj.weight.grad is not None
    # stochastic depth: in training some samples skip a block (outputs differ run to run), none in eval
    x = torch.randn(8, 3, 32, 32)
    torch.manual_seed(1)
    with torch.no_grad():
        a, b = ours.block_features(x)[3], ours.block_features(x)[3]
    assert not torch.allclose(a, b)
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours.block_features(x)[3], ours.block_features(x)[3])
    with pytest.raises(ValueError, match="multiples of 16"):
        ours(torch.randn(1, 3, 40, 48))


def test_weight_files_and_errors(tmp_path, timm_vit):
    from safetensors.torch import save_file

    cfg = get_cfg()
    add_mtaclip_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "ImageNetViT"
    cfg.MODEL.VIT.DEPTH = 4
    cfg.MODEL.VIT.OUT_INDICES = BLOCKS
    cfg.MODEL.VIT.IMAGE_SIZE = [224, 224]
    sd = timm_vit.state_dict()
    cfg.MODEL.VIT.WEIGHTS = str(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match=r"MODEL\.VIT\.WEIGHTS.*vit_small_patch16_384.*docs/backbones\.md"):
        build_backbone(cfg)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "vit.safetensors"))
    torch.save({"model": sd}, tmp_path / "deit_style.pth")  # DeiT's wrapper
    for name in ("vit.safetensors", "deit_style.pth"):
        cfg.MODEL.VIT.WEIGHTS = str(tmp_path / name)
        bb = build_backbone(cfg)
        torch.testing.assert_close(bb.blocks[2].attn.qkv.weight, sd["blocks.2.attn.qkv.weight"])
    bad = {
        "missing block": {k: v for k, v in sd.items() if not k.startswith("blocks.3.")},
        "dist_token": {**sd, "dist_token": torch.zeros(1, 1, 384)},
        "width": {**sd, "blocks.0.mlp.fc1.weight": torch.zeros(1000, 384)},
    }
    for what, match in [
        ("missing block", r"missing tensors \(blocks\.3\."),
        ("dist_token", "unexpected tensors"),
        ("width", r"shape mismatches \(blocks\.0\.mlp\.fc1\.weight"),
    ]:
        torch.save(bad[what], tmp_path / "bad.pth")
        cfg.MODEL.VIT.WEIGHTS = str(tmp_path / "bad.pth")
        with pytest.raises(ValueError, match=match):
            build_backbone(cfg)
